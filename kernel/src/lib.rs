//! Host-testable parts of the lparos kernel.
#![cfg_attr(not(test), no_std)]
