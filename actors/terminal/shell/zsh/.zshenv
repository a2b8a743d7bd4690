# moorage: zsh reads this first because ZDOTDIR points here (actors/shell_integration).
# Read the user's own .zshenv from where zsh would have, with ZDOTDIR as the user sees it.
__moorage_zdotdir=$ZDOTDIR
: ${MOORAGE_USER_ZDOTDIR:=$HOME}
if [[ -f $MOORAGE_USER_ZDOTDIR/.zshenv && $MOORAGE_USER_ZDOTDIR != $__moorage_zdotdir ]]; then
  ZDOTDIR=$MOORAGE_USER_ZDOTDIR
  builtin source "$ZDOTDIR/.zshenv"
  MOORAGE_USER_ZDOTDIR=$ZDOTDIR  # a ZDOTDIR set there is where the user's other files are
  ZDOTDIR=$__moorage_zdotdir
fi
