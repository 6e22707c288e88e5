//! The vpcd bridge: plugs a virtual card into pcscd. (in progress)
