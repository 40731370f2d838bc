//! Guest side of the hypercall channel to lparhv (the client role of the
//! grant / accept / return / rescind protocol). Filled in by the hypercall
//! channel work; the crate exists so the workspace layout is fixed.
#![cfg_attr(not(test), no_std)]
