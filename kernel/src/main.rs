//! The lparos kernel image's entry point. Everything else is the library
//! (`src/lib.rs`); the boot sequence is `lparos_kernel::runtime::boot`.
//! Here are only the symbols the boot code and the precompiled `core` and
//! `alloc` link to by name, and the panic handler.
#![no_std]
#![no_main]
#![deny(unsafe_code)]

use lparos_kernel::hal::exit::{exit, ExitCode};

/// Called by the PVH entry code (`hal/arch/x86_64/boot.rs`) in long mode,
/// on the boot stack, with the physical address of `hvm_start_info`.
#[allow(unsafe_code)] // FFI edge: the boot code calls this symbol by name
#[no_mangle]
extern "C" fn kernel_main(start_info: u64) -> ! {
    lparos_kernel::runtime::boot::run(start_info)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    lparos_kernel::runtime::boot::panic(info)
}

/// Referenced by the precompiled `core`'s unwind tables; never called
/// (panic = "abort").
#[allow(unsafe_code)] // FFI edge: a symbol the precompiled core links to
#[no_mangle]
extern "C" fn rust_eh_personality() {}

/// Referenced by landing pads in the precompiled `alloc` (built with
/// unwinding); never reached, because every panic aborts.
#[allow(unsafe_code)] // FFI edge: a symbol the precompiled alloc links to
#[no_mangle]
extern "C" fn _Unwind_Resume() -> ! {
    exit(ExitCode::Panic)
}
