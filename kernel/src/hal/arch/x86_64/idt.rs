//! Interrupt descriptor table, entry stubs and the first-level dispatcher.
//!
//! The precompiled `core` uses the SysV red zone, so an interrupt must never
//! push onto the stack of the code it interrupts: every gate names an IST
//! stack, and the CPU always switches. The stubs (in `global_asm!`, since
//! `extern "x86-interrupt"` is nightly-only) save all general registers and
//! the SSE state before calling Rust, because Rust code uses SSE.
//!
//! Vectors: 0-31 CPU exceptions (fatal: register dump, exit code 3),
//! 32-254 device and timer interrupts (counted in the executor's IrqTable,
//! level-triggered IOAPIC lines masked first, then EOI), 255 the APIC spurious vector (ignored).

use super::gdt;
use core::arch::global_asm;
use core::fmt;
use spin::Once;

/// Registers saved by the entry stub, in memory order.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct TrapFrame {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rbp: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rdx: u64,
    pub rcx: u64,
    pub rbx: u64,
    pub rax: u64,
    pub vector: u64,
    pub error_code: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

impl fmt::Display for TrapFrame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "  rip={:#018x} cs={:#x} rflags={:#x} rsp={:#018x} ss={:#x}", self.rip, self.cs, self.rflags, self.rsp, self.ss)?;
        writeln!(f, "  rax={:#018x} rbx={:#018x} rcx={:#018x} rdx={:#018x}", self.rax, self.rbx, self.rcx, self.rdx)?;
        writeln!(f, "  rsi={:#018x} rdi={:#018x} rbp={:#018x} r8 ={:#018x}", self.rsi, self.rdi, self.rbp, self.r8)?;
        writeln!(f, "  r9 ={:#018x} r10={:#018x} r11={:#018x} r12={:#018x}", self.r9, self.r10, self.r11, self.r12)?;
        write!(f, "  r13={:#018x} r14={:#018x} r15={:#018x}", self.r13, self.r14, self.r15)
    }
}

/// Size of one entry stub; stubs are laid out back to back from `isr_stubs`.
const STUB_SIZE: u64 = 16;

global_asm!(
    r#"
    .section .text
    .balign 16
    .global isr_stubs
isr_stubs:
    .set vec, 0
    .rept 256
    .balign 16
    .if (vec == 8) || (vec == 10) || (vec == 11) || (vec == 12) || (vec == 13) || (vec == 14) || (vec == 17) || (vec == 21) || (vec == 29) || (vec == 30)
    .else
    pushq $0                            /* no error code: push a zero */
    .endif
    pushq $vec
    jmp isr_common
    .set vec, vec + 1
    .endr

isr_common:
    push %rax
    push %rbx
    push %rcx
    push %rdx
    push %rsi
    push %rdi
    push %rbp
    push %r8
    push %r9
    push %r10
    push %r11
    push %r12
    push %r13
    push %r14
    push %r15
    mov %rsp, %rbx                      /* rbx = &TrapFrame (callee-saved) */
    sub $512, %rsp
    and $-16, %rsp
    fxsave (%rsp)
    mov %rbx, %rdi
    call isr_dispatch
    fxrstor (%rsp)
    mov %rbx, %rsp
    pop %r15
    pop %r14
    pop %r13
    pop %r12
    pop %r11
    pop %r10
    pop %r9
    pop %r8
    pop %rbp
    pop %rdi
    pop %rsi
    pop %rdx
    pop %rcx
    pop %rbx
    pop %rax
    add $16, %rsp                       /* vector and error code */
    iretq
"#,
    options(att_syntax)
);

extern "C" {
    static isr_stubs: u8;
}

/// One 16-byte 64-bit interrupt gate.
#[derive(Clone, Copy, Default)]
#[repr(C)]
struct Gate {
    offset_low: u16,
    selector: u16,
    ist: u8,
    type_attr: u8,
    offset_mid: u16,
    offset_high: u32,
    reserved: u32,
}

#[repr(C, align(16))]
struct Idt([Gate; 256]);

static IDT: Once<Idt> = Once::new();

fn ist_for(vector: u8) -> u8 {
    match vector {
        2 => gdt::IST_NMI,
        8 => gdt::IST_DOUBLE_FAULT,
        18 => gdt::IST_MACHINE_CHECK,
        0..=31 => gdt::IST_EXCEPTION,
        _ => gdt::IST_IRQ,
    }
}

/// Build and load the IDT. Call after `gdt::init`.
pub fn init() {
    let idt = IDT.call_once(|| {
        // Only the address of the assembler symbol is taken.
        let base = core::ptr::addr_of!(isr_stubs) as u64;
        let cs = <x86_64::instructions::segmentation::CS as x86_64::instructions::segmentation::Segment>::get_reg().0;
        let mut gates = [Gate::default(); 256];
        for (vector, gate) in gates.iter_mut().enumerate() {
            let addr = base + vector as u64 * STUB_SIZE;
            *gate = Gate {
                offset_low: addr as u16,
                selector: cs,
                ist: ist_for(vector as u8),
                type_attr: 0x8e, // present, DPL 0, 64-bit interrupt gate (IF cleared)
                offset_mid: (addr >> 16) as u16,
                offset_high: (addr >> 32) as u32,
                reserved: 0,
            };
        }
        Idt(gates)
    });
    let pointer = x86_64::structures::DescriptorTablePointer {
        limit: (core::mem::size_of::<Idt>() - 1) as u16,
        base: x86_64::VirtAddr::new(idt as *const Idt as u64),
    };
    // SAFETY: the IDT lives in a static for the kernel's whole life and each
    // gate points at an entry stub of `isr_stubs`.
    unsafe { x86_64::instructions::tables::lidt(&pointer) };
}

const EXCEPTION_NAMES: [&str; 32] = [
    "divide error",
    "debug",
    "NMI",
    "breakpoint",
    "overflow",
    "bound range",
    "invalid opcode",
    "device not available",
    "double fault",
    "coprocessor overrun",
    "invalid TSS",
    "segment not present",
    "stack fault",
    "general protection",
    "page fault",
    "reserved",
    "x87 floating point",
    "alignment check",
    "machine check",
    "SIMD floating point",
    "virtualization",
    "control protection",
    "reserved",
    "reserved",
    "reserved",
    "reserved",
    "reserved",
    "reserved",
    "hypervisor injection",
    "VMM communication",
    "security",
    "reserved",
];

/// Called by `isr_common` with interrupts disabled, on an IST stack.
#[no_mangle]
extern "C" fn isr_dispatch(frame: &mut TrapFrame) {
    let vector = frame.vector as u8;
    match vector {
        0..=31 => crate::runtime::boot::fatal_exception(EXCEPTION_NAMES[vector as usize], frame),
        super::lapic::SPURIOUS_VECTOR => {}
        _ => {
            // Level-triggered lines (the SCI) are masked until their task
            // has serviced the source; see `ioapic::mask_level_line`.
            super::ioapic::mask_level_line(vector);
            crate::IRQS.raise(vector);
            super::lapic::eoi();
        }
    }
}
