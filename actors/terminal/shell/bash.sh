# moorage shell integration for bash, loaded with `bash --init-file <this> -i`.
#
# It reads the user's start-up files as bash itself would have, then reports the shell's
# state with OSC 633 markers (VS Code's), each ending with the session's nonce, which the
# terminal actor passes in MOORAGE_NONCE and which this script removes from the environment:
#   A;N  prompt start        B;N  prompt end (the shell reads input)
#   E;<command>;N            the command line about to run (escaped)
#   C;N  its output starts   D;<exit>;N  it finished (D;N: nothing ran)
#   P;Cwd=<dir>;N            the working directory (escaped)
# Escaping (E and P): `\` is `\\`; `;` and every control byte is `\xAB`; a space goes as it is
# (a byte of an OSC string; the terminal actor's parser takes raw bytes too).
# Output that prints a marker without the nonce is not trusted by the terminal actor.
#
# Where each comes from: A and B wrap PS1; C is printed by PS0, which bash shows once after
# reading a command line and before running it (a DEBUG trap would miss `(subshell)` and
# other compound commands: nothing fires in the parent for them); E by the DEBUG trap (the
# first simple command's text), so it may follow C; P and D by PROMPT_COMMAND, before the
# user's. PS0 sets `__moorage_running` through an array subscript (arithmetic in the main
# shell, no output, no fork) and prints C only when it was 0, so a multi-line paste, whose
# lines bash reads one by one, gives one C.
# Chaining, so the user's setup keeps working: the user's PROMPT_COMMAND (string or array)
# runs after ours with `$?` as the command left it; the user's DEBUG trap runs after ours;
# the user's PS0 is kept after ours; with bash-preexec loaded, ours go into its
# precmd_functions/preexec_functions instead. Nothing forks per command: builtins only.
# And few of them: bash spends some 5 us on every simple command it runs (expansions, the
# builtin's lookup, `$_`), so the DEBUG trap's test is in the trap itself, a plain command
# line is sent as it is, the prompt hook is one function, and assignments that go together
# are one command.

if [ -n "${__moorage_loaded-}" ]; then builtin return; fi
__moorage_loaded=1
__moorage_nonce="${MOORAGE_NONCE-}"
builtin unset MOORAGE_NONCE

# A start-up file's status is not a command's: bash ignores it when it reads the file itself.
# Hence `!`, or a file that turns errexit on (`set -e`) and ends on a test that failed
# (`[ -f x ] && . x`) would end the shell here. Unlike `|| :`, `!` leaves errexit in force
# within the file: a command in it that fails ends the shell, as without us.
if [ "${MOORAGE_SHELL_LOGIN-}" = 1 ]; then
    builtin unset MOORAGE_SHELL_LOGIN
    [ -r /etc/profile ] && { ! builtin . /etc/profile; }
    for __moorage_f in ~/.bash_profile ~/.bash_login ~/.profile; do
        if [ -r "$__moorage_f" ]; then ! builtin . "$__moorage_f"; break; fi
    done
    builtin unset __moorage_f
else
    [ -r /etc/bash.bashrc ] && { ! builtin . /etc/bash.bashrc; }
    [ -r ~/.bashrc ] && { ! builtin . ~/.bashrc; }
fi

# No nonce, no integration: the user's files are read, nothing else changes.
if [ -z "$__moorage_nonce" ]; then builtin return; fi

# start: before the first prompt; prompt: reading a command; running: after C.
__moorage_state=start
__moorage_running=0  # set to 1 by PS0 when a command line has been read
__moorage_e_sent=0
__moorage_cm=($'\e]633;C;'"$__moorage_nonce"$'\a' "")
__moorage_ps0='${__moorage_cm[__moorage_running]-}${__moorage_nil[__moorage_running=1]-}'

__moorage_escape() {
    # The escaped value of $1 in __moorage_esc (a variable: no subshell). No `local
    # LC_ALL=C`: bash re-reads the locale on entry and on return, twice a command. A value
    # with nothing to escape (most command lines, most directories) is taken as it is (the
    # E path makes that test itself, one call less).
    if [[ $1 != *[\\\;[:cntrl:]]* ]]; then
        __moorage_esc="$1"
        builtin return
    fi
    builtin local s="$1" i h c
    s="${s//\\/\\\\}"
    s="${s//;/\\x3b}"
    if [[ $s == *[[:cntrl:]]* ]]; then
        for ((i = 1; i < 32; i++)); do
            builtin printf -v h '%02x' "$i"
            builtin printf -v c "\\x$h"
            s="${s//"$c"/\\x$h}"
        done
    fi
    __moorage_esc="$s"
}

# `$?` set to $1 for a user's hook, as `__moorage_status "$s" && :`: a command that fails
# before a `&&` is one errexit (`set -e`) lets pass, so a failed command the shell survived
# does not end it here, and the hook sees its status all the same.
__moorage_status() { builtin return "${1-0}"; }

__moorage_user_pc=()  # the user's PROMPT_COMMAND (below; bash-preexec keeps its own)

__moorage_precmd() {
    # D ends the command, with `$?` as it left it; P;Cwd first, so the terminal actor has
    # the cwd when it completes the command on D. Then the user's PROMPT_COMMAND, given
    # that `$?` too, and our markers put back if a theme rebuilt the prompt. With
    # bash-preexec this is one of its precmd functions (it gives them `$?`).
    builtin local status="$?" __moorage_c
    if [[ $PWD != "${__moorage_pwd-}" ]]; then
        __moorage_escape "$PWD"
        __moorage_pwd="$PWD" __moorage_pwd_esc="$__moorage_esc"
    fi
    if [[ $__moorage_running == 1 ]]; then
        builtin printf '\e]633;P;Cwd=%s;%s\a\e]633;D;%s;%s\a' \
            "$__moorage_pwd_esc" "$__moorage_nonce" "$status" "$__moorage_nonce"
    elif [[ $__moorage_state == prompt ]]; then
        builtin printf '\e]633;P;Cwd=%s;%s\a\e]633;D;%s\a' \
            "$__moorage_pwd_esc" "$__moorage_nonce" "$__moorage_nonce"
    fi
    __moorage_running=0 __moorage_e_sent=0
    if ((${#__moorage_user_pc[@]})); then
        __moorage_state=precmd
        for __moorage_c in "${__moorage_user_pc[@]}"; do
            __moorage_status "$status" && :
            # (`&& :`: what bash does with PROMPT_COMMAND itself: a command in it that fails
            # ends the shell under errexit, its last status, `[ -n "$X" ] && f`, does not)
            builtin eval "$__moorage_c" && :
        done
    fi
    # (two tests in one: the markers are still where we put them, the common case)
    [[ ${PS1-} == *"633;B;$__moorage_nonce"* && ${PS0-} == *__moorage_cm* &&
       ${PS2-} == *"133;A;k=s;$__moorage_nonce"* ]] || __moorage_wrap_ps1
    __moorage_state=prompt
    # 0, not `$status`: bash gives the prompt back the `$?` it had before PROMPT_COMMAND,
    # and under errexit a PROMPT_COMMAND that fails ends the shell.
    builtin return 0
}

__moorage_wrap_ps1() {
    # Themes that rebuild PS1 (or PS0) in PROMPT_COMMAND drop our markers: put them back.
    if [[ ${PS1-} != *"633;B;$__moorage_nonce"* ]]; then
        PS1="\[\e]633;A;$__moorage_nonce\a\]${PS1-}\[\e]633;B;$__moorage_nonce\a\]"
    fi
    if [[ ${PS0-} != *__moorage_cm* ]]; then
        PS0="$__moorage_ps0${PS0-}"
    fi
    # A continuation prompt (OSC 133 A, k=s): the line read was not a whole command (an
    # open quote, a trailing backslash, an unfinished block or here-document).
    if [[ ${PS2-} != *"133;A;k=s;$__moorage_nonce"* ]]; then
        PS2="\[\e]133;A;k=s;$__moorage_nonce\a\]${PS2-> }"
    fi
}

__moorage_preexec() {
    # $1: the command line (bash-preexec passes it; the DEBUG trap passes $BASH_COMMAND).
    # The caller made sure an E is due: once per command line, after C (`__moorage_running`
    # 1, `__moorage_e_sent` 0), and not for programmable completion (COMP_LINE).
    __moorage_e_sent=1 __moorage_state=running __moorage_esc="$1"
    [[ $1 != *[\\\;[:cntrl:]]* ]] || __moorage_escape "$1"
    builtin printf '\e]633;E;%s;%s\a' "$__moorage_esc" "$__moorage_nonce"
}

if [[ -n "${bash_preexec_imported-}${__bp_imported-}" ]]; then
    # bash-preexec owns PROMPT_COMMAND and the DEBUG trap.
    __moorage_wrap_bp() { __moorage_wrap_ps1; }
    __moorage_preexec_bp() {
        if [[ $__moorage_running$__moorage_e_sent == 10 && -z ${COMP_LINE-} ]]; then
            __moorage_preexec "$1"
        fi
    }
    precmd_functions=(__moorage_precmd "${precmd_functions[@]}" __moorage_wrap_bp)
    preexec_functions+=(__moorage_preexec_bp)
    __moorage_wrap_ps1
    builtin bind 'set enable-bracketed-paste on' 2>/dev/null
    builtin return 0
fi

# The user's PROMPT_COMMAND, kept as an array (bash 5.1 allows both forms).
__moorage_user_pc=("${PROMPT_COMMAND[@]}")
builtin unset PROMPT_COMMAND
PROMPT_COMMAND=__moorage_precmd

# The user's DEBUG trap, kept as its command text, runs after ours. Read with function
# tracing off (`shopt -s extdebug` turns it on): the command substitution would inherit the
# trap, and what the trap prints would be read as its text.
__moorage_user_trap=""
__moorage_ft=""
[[ $- == *T* ]] && { __moorage_ft=1; builtin set +T; }
if __moorage_t="$(builtin trap -p DEBUG)" && [ -n "$__moorage_t" ]; then
    builtin eval "__moorage_t=($__moorage_t)"  # trap -- 'text' DEBUG: quoting survives
    __moorage_user_trap="${__moorage_t[2]-}"
fi
[ -n "$__moorage_ft" ] && builtin set -T
builtin unset __moorage_t __moorage_ft

# The DEBUG trap also fires for PROMPT_COMMAND itself: that is not a command. The test is
# the trap's own text, not a function's (most commands a trap sees need no E), and an `if`,
# so the trap's status is 0 when it does nothing (under `shopt -s extdebug` a DEBUG trap
# that fails skips the command).
__moorage_debug='if [[ $__moorage_running$__moorage_e_sent == 10 && -z ${COMP_LINE-} &&
        $BASH_COMMAND != __moorage_precmd ]]; then __moorage_preexec "$BASH_COMMAND"; fi'

if [ -n "$__moorage_user_trap" ]; then
    # the user's trap sees `$?` as the last command left it; its status is the trap's (extdebug
    # skips a command on it), and `&& :` keeps a last one that failed from ending the shell
    builtin trap "__moorage_trap_status=\$?; $__moorage_debug
        __moorage_status \"\$__moorage_trap_status\" && :
        builtin eval -- \"\$__moorage_user_trap\" && :" DEBUG
else
    builtin trap "$__moorage_debug" DEBUG
fi
builtin unset __moorage_debug

__moorage_wrap_ps1
# A multi-line command arrives as one bracketed paste: one command, one C, one D.
builtin bind 'set enable-bracketed-paste on' 2>/dev/null
