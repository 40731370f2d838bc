//! Kernel images, the accelerator, scratch directories and the SKIPPED
//! notice of the QEMU integration tests (docs/testing.md).

use lparhv::machine::qemu::{self, Accel, AccelChoice, GuestSpec};
use std::io::Write;
use std::path::PathBuf;
use tempfile::TempDir;

/// The test image `./run.sh build` made (or `LPAROS_TEST_KERNEL`). A missing
/// image fails the test: a QEMU test never passes without its guest.
pub fn kernel() -> PathBuf {
    let k = qemu::test_kernel();
    assert!(k.is_file(), "kernel image {} missing: run ./run.sh build", k.display());
    k
}

/// The accelerator the probe chooses (KVM if it can run lparos, else TCG;
/// `LPAROS_ACCEL` forces one), said on stderr.
pub fn accel() -> Accel {
    let d = qemu::choose_accel(AccelChoice::Auto, &kernel()).expect("accelerator");
    eprintln!("accelerator: {} ({})", d.accel, d.reason);
    d.accel
}

/// A guest spec of the test image on [`accel`].
pub fn spec(name: &str) -> GuestSpec {
    GuestSpec::new(name, &kernel(), accel())
}

/// A fresh directory under /tmp, removed when dropped. Its path is short:
/// unix socket paths inside it are limited to 108 bytes.
pub fn scratch(tag: &str) -> TempDir {
    tempfile::Builder::new().prefix(&format!("lpt-{tag}-")).tempdir_in("/tmp").expect("scratch directory")
}

/// Says on stderr that `test` checked nothing on this host, and why. libtest
/// captures `eprintln!` (shown only with `--nocapture` or on failure); a
/// write to the stderr handle itself is not captured, so the notice shows
/// in every run.
pub fn skipped(test: &str, reason: &str) {
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {reason}");
}
