# moorage: the user's .zshrc, then the integration hooks (moorage.zsh), then ZDOTDIR and
# HISTFILE as the user would have them (a login shell still reads .zlogin from here first).
if [[ -f $MOORAGE_USER_ZDOTDIR/.zshrc && $MOORAGE_USER_ZDOTDIR != $__moorage_zdotdir ]]; then
  ZDOTDIR=$MOORAGE_USER_ZDOTDIR
  builtin source "$ZDOTDIR/.zshrc"
  MOORAGE_USER_ZDOTDIR=$ZDOTDIR
  ZDOTDIR=$__moorage_zdotdir
fi
builtin source "$__moorage_zdotdir/moorage.zsh"
# A HISTFILE derived from ZDOTDIR before the user's files ran points here: move it home.
if [[ ${HISTFILE-} == $__moorage_zdotdir/* ]]; then
  HISTFILE=$MOORAGE_USER_ZDOTDIR/${HISTFILE#$__moorage_zdotdir/}
fi
if [[ ${MOORAGE_SHELL_LOGIN-} != 1 ]]; then
  builtin source "$__moorage_zdotdir/restore.zsh"
fi
