//! Wire format of the hypercall channel between lparos guests and lparhv,
//! shared by both sides. Filled in by the hypercall channel work.
#![cfg_attr(not(test), no_std)]
