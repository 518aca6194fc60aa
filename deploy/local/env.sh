# Sourced by the local scripts: where cached tools live and how services are reached.
: "${ZENTRA_CACHE:=$HOME/.cache/zentra}"
ZENTRA_BIN="$ZENTRA_CACHE/bin"
export ZENTRA_CACHE ZENTRA_BIN
case ":$PATH:" in
  *":$ZENTRA_BIN:"*) ;;
  *) export PATH="$ZENTRA_BIN:$PATH" ;;
esac
