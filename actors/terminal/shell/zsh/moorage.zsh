# moorage shell integration for zsh: OSC 633 markers with the session's nonce, as bash.sh
# describes (A B prompt, E command line, C output, D;exit finished, P;Cwd). precmd and
# preexec hooks; the user's hooks and prompt keep working (ours wrap PS1 again when a theme
# rebuilds it). Only builtins run per command: no subshell; and a value with nothing to
# escape (most command lines; the cwd, escaped once per change) skips `emulate` and the
# LC_ALL switch, which re-reads the locale on entry and on return. Spaces go unescaped.
__moorage_nonce=${MOORAGE_NONCE-}
unset MOORAGE_NONCE
if [[ -z $__moorage_nonce ]]; then
  return 0
fi
typeset -g __moorage_state=start  # start, prompt (reading a command), running (after C)
typeset -g __moorage_hc=""  # x and the user's histchars while a command of term.exec has them

__moorage_escape() {
  if [[ $1 != *[\\\;$'\001'-$'\037']* ]]; then
    typeset -g __moorage_esc=$1
    return
  fi
  emulate -L zsh
  local LC_ALL=C s=$1 i h c
  s=${s//\\/\\\\}
  s=${s//;/\\x3b}
  s=${s//$'\n'/\\x0a}
  if [[ $s == *[$'\001'-$'\037']* ]]; then
    for (( i = 1; i < 32; i++ )); do
      h=${(l:2::0:)$(( [##16] i ))}
      c=${(#)i}
      s=${s//$c/\\x$h}
    done
  fi
  typeset -g __moorage_esc=$s
}

__moorage_precmd() {
  local ret=$?
  if [[ -n $__moorage_hc ]]; then
    histchars=${__moorage_hc#x}
    __moorage_hc=
  fi
  if [[ $PWD != ${__moorage_pwd-} ]]; then
    __moorage_escape "$PWD"
    typeset -g __moorage_pwd=$PWD __moorage_pwd_esc=$__moorage_esc
  fi
  if [[ $__moorage_state == running ]]; then
    builtin printf '\e]633;P;Cwd=%s;%s\a\e]633;D;%s;%s\a' \
      "$__moorage_pwd_esc" "$__moorage_nonce" "$ret" "$__moorage_nonce"
  elif [[ $__moorage_state == prompt ]]; then
    builtin printf '\e]633;P;Cwd=%s;%s\a\e]633;D;%s\a' \
      "$__moorage_pwd_esc" "$__moorage_nonce" "$__moorage_nonce"
  fi
  __moorage_state=prompt
  # 0, not $ret: zsh gives each precmd function, and the prompt, the `$?` the command left,
  # and under ERR_EXIT a hook that fails ends the shell.
  return 0
}

__moorage_preexec() {
  __moorage_escape "$1"
  builtin printf '\e]633;E;%s;%s\a\e]633;C;%s\a' \
    "$__moorage_esc" "$__moorage_nonce" "$__moorage_nonce"
  __moorage_state=running
}

__moorage_verbatim() {
  # A widget on ESC [ DEL, which the terminal actor sends before a command of term.exec: that
  # line is read without history expansion, so `!` and a first `^` are text, as in a script.
  # zsh expands as it reads the line after the editor, by histchars' first two (BANG_HIST is
  # read before the prompt, too early), which are NUL until the next prompt (__moorage_precmd
  # puts the user's back); the third, the comment character, stays.
  if [[ -z $__moorage_hc ]]; then
    typeset -g __moorage_hc=x$histchars
  fi
  histchars=$'\0\0'${${__moorage_hc#x}:2:1}
}

__moorage_hooks_first() {
  # zsh runs a function named precmd before every hook of precmd_functions, so what it
  # prints came before our D, in the command's output: it becomes the first hook after ours
  # (zsh gives each the same `$?`). And ours goes first again when an rc read again put a
  # hook before it. (A function named preexec stays: it runs before our C, and what it
  # prints stays out of the command's output, as it should.)
  emulate -L zsh
  local -a rest
  rest=(${precmd_functions:#__moorage_precmd})
  if (( $+functions[precmd] )); then
    # (`functions -c`: zsh 5.8 and later)
    functions -c precmd __moorage_user_precmd 2>/dev/null ||
      functions[__moorage_user_precmd]=$functions[precmd]
    unfunction precmd
    rest=(__moorage_user_precmd ${rest:#__moorage_user_precmd})
  fi
  precmd_functions=(__moorage_precmd $rest)
  typeset -g __moorage_nhooks=${#precmd_functions[@]}
}

__moorage_wrap_prompt() {
  # Every prompt, after the user's hooks: a precmd function, or hooks added since (one may
  # be before ours), came before our D this time, not the next (__moorage_hooks_first).
  # (`[@]`: KSH_ARRAYS makes `${#name}` the first element's length)
  if [[ -n ${functions[precmd]+1} || ${#precmd_functions[@]} != $__moorage_nhooks ]]; then
    __moorage_hooks_first
  fi
  # (`${PS1-}`: a user may unset a prompt, and NO_UNSET makes reading it an error)
  if [[ ${PS1-} != *"633;B;$__moorage_nonce"* ]]; then
    PS1=$'%{\e]633;A;'$__moorage_nonce$'\a%}'${PS1-}$'%{\e]633;B;'$__moorage_nonce$'\a%}'
  fi
  # a continuation prompt (OSC 133 A, k=s): the line read was not a whole command
  if [[ ${PS2-} != *"133;A;k=s;$__moorage_nonce"* ]]; then
    PS2=$'%{\e]133;A;k=s;'$__moorage_nonce$'\a%}'${PS2-}
  fi
  # a spelling question (CORRECT, CORRECT_ALL: OSC 133 A, k=q): the shell reads a key before
  # it runs the line
  if [[ ${SPROMPT-} != *"133;A;k=q;$__moorage_nonce"* ]]; then
    SPROMPT=$'%{\e]133;A;k=q;'$__moorage_nonce$'\a%}'${SPROMPT-}
  fi
}

# ours first (D before the user's precmd output), the prompt wrap last; `${name[@]-}`: a user
# with no hooks has no such arrays, which NO_UNSET would not let us read (the empty word the
# `-` gives is dropped, unquoted)
precmd_functions=(__moorage_precmd ${precmd_functions[@]-} __moorage_wrap_prompt)
# (in each keymap a prompt may start in; ESC [ then a key no terminal sends after it: where
# the binding is gone, zle drops all three)
zle -N __moorage_verbatim
bindkey -M emacs $'\e[\x7f' __moorage_verbatim
bindkey -M viins $'\e[\x7f' __moorage_verbatim
bindkey -M vicmd $'\e[\x7f' __moorage_verbatim
typeset -g __moorage_nhooks=0
preexec_functions=(__moorage_preexec ${preexec_functions[@]-})
__moorage_wrap_prompt
