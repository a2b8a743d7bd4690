# moorage: login shells only; the user's .zprofile, read with the user's ZDOTDIR.
if [[ -f $MOORAGE_USER_ZDOTDIR/.zprofile && $MOORAGE_USER_ZDOTDIR != $__moorage_zdotdir ]]; then
  ZDOTDIR=$MOORAGE_USER_ZDOTDIR
  builtin source "$ZDOTDIR/.zprofile"
  MOORAGE_USER_ZDOTDIR=$ZDOTDIR
  ZDOTDIR=$__moorage_zdotdir
fi
