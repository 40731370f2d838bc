//! tests.rs — unit tests of the whole guest-side flow (create, activate,
//! LV I/O, damage, torn updates, reverify) on in-memory devices.
