# moorage: login shells only, read last; the user's .zlogin, then ZDOTDIR restored.
if [[ -f $MOORAGE_USER_ZDOTDIR/.zlogin && $MOORAGE_USER_ZDOTDIR != $__moorage_zdotdir ]]; then
  ZDOTDIR=$MOORAGE_USER_ZDOTDIR
  builtin source "$ZDOTDIR/.zlogin"
  MOORAGE_USER_ZDOTDIR=$ZDOTDIR
fi
builtin source "$__moorage_zdotdir/restore.zsh"
