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
# precmd_functions/preexec_functions instead. A PROMPT_COMMAND set again after start-up (an
# rc read again: `PROMPT_COMMAND="history -a; $PROMPT_COMMAND"`, or one without ours) is
# taken over again (__moorage_take_pc), and the command that set it gets its D from PS1 if
# ours does not give it (__moorage_ps1_d). Nothing forks per command: builtins only.
# And few of them: bash spends some 5 us on every simple command it runs (expansions, the
# builtin's lookup, `$_`), so the DEBUG trap's test is in the trap itself, a plain command
# line is sent as it is, the prompt hook is one function, and assignments that go together
# are one command.
# The terminal actor sends ESC [ DEL before a command of term.exec that may hold a history
# character: bound here (__moorage_verbatim) to turn history expansion off for the line that
# follows, so that the
# command runs as it was sent (`echo "fix!x"` ran a command of the history list); the
# user's setting is back at the next prompt, for the lines a person types.

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
__moorage_pc_ro=""  # set once PROMPT_COMMAND is found readonly: never taken over
__moorage_hx=""  # 1: histexpand turned off for a command of term.exec, on again at the prompt
__moorage_cm=($'\e]633;C;'"$__moorage_nonce"$'\a' "")
__moorage_ps0='${__moorage_cm[__moorage_running]-}${__moorage_nil[__moorage_running=1]-}'
# The D of a command that ours did not end (a PROMPT_COMMAND set again while it ran, which
# runs ours late in a line of the user's, or not at all), from PS1: bash expands it with the
# command's `$?` whatever PROMPT_COMMAND ran. First in PS1 where that may happen (armed:
# __moorage_arm), taken out by ours when it ends a command itself (its expansion costs every
# prompt). It gives a D while `__moorage_running` is still 1, and sets that to 0,
# `__moorage_e_sent` too, as ours does: a prompt drawn again (no PROMPT_COMMAND then) gives
# none. Arithmetic in an array subscript, as PS0's.
__moorage_lt=("" 1)
__moorage_armed=""
__moorage_ps1_d='\[${__moorage_lt[__moorage_running]:+\e]633;P;Cwd=${__moorage_pwd_esc-};'"$__moorage_nonce"'\a\e]633;D;$?;'"$__moorage_nonce"'\a}${__moorage_nil[__moorage_running=__moorage_e_sent=0]-}\]'

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
__moorage_theirs=""   # 1: PROMPT_COMMAND has ours among the user's commands (set again)

__moorage_precmd() {
    # D ends the command, with `$?` as it left it; P;Cwd first, so the terminal actor has
    # the cwd when it completes the command on D. Then the user's PROMPT_COMMAND, given
    # that `$?` too, and our markers put back if a theme rebuilt the prompt. With
    # bash-preexec this is one of its precmd functions (it gives them `$?`).
    builtin local status="$?" __moorage_c
    [[ -z $__moorage_hx ]] || { builtin set -H; __moorage_hx=""; }
    if [[ $PWD != "${__moorage_pwd-}" ]]; then
        __moorage_escape "$PWD"
        __moorage_pwd="$PWD" __moorage_pwd_esc="$__moorage_esc"
    fi
    if [[ $__moorage_running$__moorage_theirs == 1 ]]; then
        builtin printf '\e]633;P;Cwd=%s;%s\a\e]633;D;%s;%s\a' \
            "$__moorage_pwd_esc" "$__moorage_nonce" "$status" "$__moorage_nonce"
    elif [[ -n $__moorage_theirs ]]; then
        __moorage_pc_again  # (run from a PROMPT_COMMAND set again; it reads `status`)
        builtin return 0
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
    # (one test: PS1 not armed, the markers still where we put them, the common case)
    [[ -z $__moorage_armed && ${PS1-} == *"633;B;$__moorage_nonce"* &&
       ${PS0-} == *__moorage_cm* && ${PS2-} == *"133;A;k=s;$__moorage_nonce"* ]] ||
        __moorage_fix_prompts
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

__moorage_fix_prompts() {
    # Ours ended the command: PS1 need not (disarmed); and our markers back where they went.
    builtin local ps1="${PS1-}"
    if [[ -n $__moorage_armed ]]; then
        PS1="${ps1//"$__moorage_ps1_d"/}" __moorage_armed=""
    fi
    __moorage_wrap_ps1
}

__moorage_arm() {
    # PS1 to give the D should ours not (__moorage_ps1_d); with promptvars only, which the
    # expansions in a prompt need (as PS0's).
    __moorage_wrap_ps1
    if [[ $PS1 != *"$__moorage_ps1_d"* ]] && builtin shopt -q promptvars; then
        PS1="$__moorage_ps1_d$PS1"
    fi
    __moorage_armed=1
}

__moorage_squash() {
    # $1 with each run of blanks and `;` one `;`, and one at each end: what a comparison of
    # command lists goes by
    __moorage_sq=";${1//[[:space:]]/;};"
    while [[ $__moorage_sq == *";;"* ]]; do __moorage_sq="${__moorage_sq//;;/;}"; done
}

__moorage_take_pc() {
    # PROMPT_COMMAND (string or array: bash 5.1 allows both) becomes the user's, and ours
    # alone: at start-up, and when it is set again (the DEBUG trap sees ours gone from it,
    # ours sees others in it). Our name in it stood for the user's PROMPT_COMMAND as the code
    # that set it saw it (`"history -a; $PROMPT_COMMAND"`): the user's commands go in its
    # place, unless that code had them already (an rc read again adds its own again). A
    # command that keeps `$?` closes them, or takes their place, so the line parses as before
    # and what follows gets the same `$?` (with `&& :`, as the hooks' own: under errexit).
    # Set in one command: with function tracing on (`set -T`) the trap runs in here too.
    builtin local e rest IFS=$'\n' prev="${__moorage_user_pc[*]-}"
    builtin local -a new
    __moorage_held=""  # (1: the new value holds the user's commands already)
    if [[ ${PROMPT_COMMAND[*]-} == *__moorage_precmd* ]]; then
        __moorage_squash "${PROMPT_COMMAND[*]//__moorage_precmd/}"
        rest="$__moorage_sq"
        __moorage_squash "$prev"
        [[ $rest != *"$__moorage_sq"* ]] || __moorage_held=1
    fi
    for e in "${PROMPT_COMMAND[@]}"; do
        if [[ $e == __moorage_precmd ]]; then
            [[ -n $__moorage_held ]] || new+=("${__moorage_user_pc[@]}")
            builtin continue
        fi
        if [[ $e == *__moorage_precmd* ]]; then
            rest='__moorage_status $? && :'
            [[ -n $__moorage_held ]] || rest="{ $prev"$'\n'"$rest; }"
            # (quoted: bash 5.2 reads `&` in a replacement as the match)
            e="${e//__moorage_precmd/"$rest"}"
        fi
        new+=("$e")
    done
    # (a readonly one is left as it is, for good: assigning it would end the command line,
    # and trying at each command would cost each command the attempt; `declare -p` for an
    # unset one, which `${...@a}` cannot read under `set -u`)
    if [[ -n ${PROMPT_COMMAND+x} ]]; then
        [[ ${PROMPT_COMMAND@a} != *r* ]] || { __moorage_pc_ro=1; builtin return 0; }
    elif [[ $(builtin declare -p PROMPT_COMMAND 2>/dev/null) == "declare -r"* ]]; then
        __moorage_pc_ro=1
        builtin return 0
    fi
    PROMPT_COMMAND=(__moorage_precmd) __moorage_user_pc=("${new[@]}")
    if [[ $__moorage_running == 1 ]]; then
        # Set while a command ran, or in the PROMPT_COMMAND run after it, where ours may not
        # come, or late: PS1 gives the D then, with the cwd as it is now.
        __moorage_state=prompt
        if [[ $PWD != "${__moorage_pwd-}" ]]; then
            __moorage_escape "$PWD"
            __moorage_pwd="$PWD" __moorage_pwd_esc="$__moorage_esc"
        fi
        __moorage_arm
    fi
}

__moorage_pc_again() {
    # Ours, run from a PROMPT_COMMAND set again while the command ran that has the user's
    # commands in it too (`"history -a; $PROMPT_COMMAND"`), which run anyway: ours is alone
    # in it again from the next prompt. Our name there stands for ours and for the user's
    # commands it had, which run here (unless the new ones hold them), given the `$?` ours
    # was given (`status`, ours' local). The D now if that is the command's (ours first, or
    # an element of an array); else PS1 gives it.
    builtin local -a __moorage_prev
    builtin local __moorage_c
    __moorage_prev=("${__moorage_user_pc[@]}") __moorage_theirs=""
    if [[ $__moorage_running == 1 ]]; then
        if __moorage_given_status; then
            builtin printf '\e]633;P;Cwd=%s;%s\a\e]633;D;%s;%s\a' \
                "$__moorage_pwd_esc" "$__moorage_nonce" "$status" "$__moorage_nonce"
            __moorage_running=0 __moorage_e_sent=0
        fi
    elif [[ $__moorage_state == prompt ]]; then
        builtin printf '\e]633;P;Cwd=%s;%s\a\e]633;D;%s\a' \
            "$__moorage_pwd_esc" "$__moorage_nonce" "$__moorage_nonce"
    fi
    __moorage_take_pc
    if [[ -z $__moorage_held ]]; then
        __moorage_state=precmd
        for __moorage_c in "${__moorage_prev[@]}"; do
            __moorage_status "$status" && :
            builtin eval "$__moorage_c" && :
        done
    fi
    [[ $__moorage_running == 1 ]] || __moorage_fix_prompts
    __moorage_state=prompt
}

__moorage_given_status() {
    # Did the PROMPT_COMMAND running ours give it the command's `$?`? Yes when ours comes
    # first in it, or is an element of an array (bash gives each element the command's).
    builtin local e="${PROMPT_COMMAND[0]-}"
    e="${e#"${e%%[![:space:]]*}"}"
    [[ $e != __moorage_precmd && $e != __moorage_precmd[\;[:space:]]* ]] || builtin return 0
    for e in "${PROMPT_COMMAND[@]}"; do
        [[ $e != __moorage_precmd ]] || builtin return 0
    done
    builtin return 1
}

__moorage_preexec() {
    # $1: the command line, from bash-preexec (__moorage_on_debug does the same itself).
    # The caller made sure an E is due: once per command line, after C (`__moorage_running`
    # 1, `__moorage_e_sent` 0), and not for programmable completion (COMP_LINE).
    __moorage_e_sent=1 __moorage_state=running __moorage_esc="$1"
    [[ $1 != *[\\\;[:cntrl:]]* ]] || __moorage_escape "$1"
    builtin printf '\e]633;E;%s;%s\a' "$__moorage_esc" "$__moorage_nonce"
}

__moorage_verbatim() {
    # ESC [ DEL, which the terminal actor sends before a command of term.exec: that line is
    # read without history expansion (bash makes it when it takes the line, after this), so
    # `!` and a first `^` are text, as in a script. Turned on again by __moorage_precmd when
    # the user had it on. (Its caller passes `$_`, which it leaves as it was; `$?` stays.)
    [[ $- != *H* ]] || { builtin set +H; __moorage_hx=1; }
}
# (in each keymap a prompt may start in; ESC [ then a key no terminal sends after it: where
# the binding is gone, readline drops all three with a beep)
for __moorage_t in emacs vi-insert vi-command; do
    builtin bind -m "$__moorage_t" -x '"\e[\C-?": __moorage_verbatim "$_"' 2>/dev/null || :
done
builtin unset __moorage_t

if [[ -n "${bash_preexec_imported-}${__bp_imported-}" ]]; then
    # bash-preexec owns PROMPT_COMMAND and the DEBUG trap.
    __moorage_verbatim() {
        [[ $- != *H* ]] || { builtin set +H; __moorage_hx=1; }
        # (bash-preexec before 0.5.1 runs its preexec functions for a `bind -x` command, as
        # for a command line, and the line after it then gets none, no E: its mode back)
        __bp_preexec_interactive_mode=on
    }
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

__moorage_take_pc

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

__moorage_on_debug() {
    # What the DEBUG trap does when its test holds. Its status is 0 (under `shopt -s
    # extdebug` a DEBUG trap that fails skips the command): each branch ends on a command
    # that succeeds, and none taken is 0. The E of a command line, once, after C (not for the
    # trap's firing for PROMPT_COMMAND itself, nor in programmable completion): as
    # __moorage_preexec, written out (a call costs as much as all the rest).
    if [[ $__moorage_running$__moorage_e_sent == 10 && -z ${COMP_LINE-} &&
          $BASH_COMMAND != __moorage_precmd ]]; then
        __moorage_e_sent=1 __moorage_state=running __moorage_esc="$BASH_COMMAND"
        # (one test for two rare cases: something to escape; a command that may leave
        # PROMPT_COMMAND without ours, with nothing after it for this trap to see that:
        # `unset PROMPT_COMMAND`, when PS1 is to give the D)
        [[ $__moorage_esc != *[\\\;[:cntrl:]]* && $__moorage_esc != *PROMPT_COMMAND* ]] ||
            __moorage_e_rare
        builtin printf '\e]633;E;%s;%s\a' "$__moorage_esc" "$__moorage_nonce"
    elif [[ ${PROMPT_COMMAND[*]-} != __moorage_precmd ]]; then
        # PROMPT_COMMAND set again: with ours among the user's commands ours sees to it
        # when it runs from there; without ours, it is taken over now
        if [[ ${PROMPT_COMMAND[*]-} == *__moorage_precmd* ]]; then
            __moorage_theirs=1
        else
            __moorage_take_pc
        fi
    fi
}

__moorage_e_rare() {
    [[ $__moorage_esc != *[\\\;[:cntrl:]]* ]] || __moorage_escape "$__moorage_esc"
    [[ $__moorage_esc != *PROMPT_COMMAND* ]] || __moorage_arm
}

# The test is the trap's own text, not a function's (most commands a trap sees need
# neither), one `[[ ]]` of plain strings (`${PROMPT_COMMAND-}`, element 0: joining an array
# costs more, and an array with ours first runs ours first, given `$?`, as it should), and
# an `if`, so the trap's status is 0 when it does nothing.
__moorage_debug='if [[ $__moorage_running$__moorage_e_sent == 10 ||
        ( ${PROMPT_COMMAND-} != __moorage_precmd && -z $__moorage_pc_ro ) ]]; then
        __moorage_on_debug; fi'

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
