# moorage: the end of start-up: ZDOTDIR back to the user's (unset if it was), no trace left.
if [[ ${MOORAGE_ZDOTDIR_SET-} == 1 ]]; then
  export ZDOTDIR=$MOORAGE_USER_ZDOTDIR
else
  unset ZDOTDIR
fi
unset MOORAGE_USER_ZDOTDIR MOORAGE_ZDOTDIR_SET MOORAGE_SHELL_LOGIN __moorage_zdotdir
