//! The PVH entry point: QEMU jumps to `pvh_start32` in 32-bit protected mode with paging off
//! and `%ebx` pointing at the `hvm_start_info` structure. The trampoline turns on long mode with
//! a boot page table that maps the first GiB three times (identity, for the trampoline itself;
//! at the direct-map offset, so Rust code can read boot structures; at the kernel's link address
//! in the top 2 GiB), switches to the boot stack and calls [`kernel_entry`](crate::kernel_entry).
//! The kernel replaces these tables with its own as soon as it knows the memory map.

use crate::{kernel_entry, KernelStack, BOOT_STACK};

core::arch::global_asm!(
    r#"
    .section .note.pvh, "a", @note
    .balign 4
    .long 4                     # name size ("Xen\0")
    .long 8                     # descriptor size: QEMU reads 64 bits for an ELF64 kernel
    .long 18                    # XEN_ELFNOTE_PHYS32_ENTRY
    .asciz "Xen"
    .balign 4
    .quad pvh_start32
    .balign 4

    .section .boot.text, "ax", @progbits
    .code32
    .global pvh_start32
pvh_start32:
    cli
    cld
    movl %ebx, %edi             # physical address of hvm_start_info, first argument
    lgdt boot_gdt_pointer
    movl $0x80000001, %eax      # enable NX only where the CPU has it (EDX bit 20)
    cpuid
    movl $0x100, %esi           # EFER.LME
    testl $0x100000, %edx
    jz 1f
    orl $0x800, %esi            # EFER.NXE
1:
    movl %cr4, %eax
    orl $0x20, %eax             # CR4.PAE
    movl %eax, %cr4
    movl $boot_pml4, %eax
    movl %eax, %cr3
    movl $0xC0000080, %ecx      # IA32_EFER
    rdmsr
    orl %esi, %eax
    wrmsr
    movl %cr0, %eax
    orl $0x80010001, %eax       # CR0.PG | CR0.WP | CR0.PE
    movl %eax, %cr0
    ljmp $0x08, $boot_long_mode

    .code64
boot_long_mode:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    xorw %ax, %ax
    movw %ax, %fs
    movw %ax, %gs
    movl %edi, %edi             # upper register halves are undefined after the mode switch
    movabsq ${stack} + {stack_size}, %rsp
    xorl %ebp, %ebp
    movabsq ${entry}, %rax
    callq *%rax
2:
    hlt
    jmp 2b

    .section .boot.data, "aw", @progbits
    .balign 4096
boot_pml4:
    .quad boot_pdpt_low + 0x3   # 0: identity map of the first GiB (the trampoline runs here)
    .fill 255, 8, 0
    .quad boot_pdpt_low + 0x3   # 256: direct map, 0xffff800000000000 -> physical 0
    .fill 254, 8, 0
    .quad boot_pdpt_high + 0x3  # 511: the kernel image, 0xffffffff80000000 -> physical 0
boot_pdpt_low:
    .quad boot_pd + 0x3
    .fill 511, 8, 0
boot_pdpt_high:
    .fill 510, 8, 0
    .quad boot_pd + 0x3
    .quad 0
boot_pd:
    .set boot_frame, 0
    .rept 512
    .quad boot_frame + 0x83     # present | writable | 2 MiB page
    .set boot_frame, boot_frame + 0x200000
    .endr
boot_gdt:
    .quad 0
    .quad 0x00af9a000000ffff    # 0x08: 64-bit code
    .quad 0x00cf92000000ffff    # 0x10: data
boot_gdt_pointer:
    .word boot_gdt_pointer - boot_gdt - 1
    .long boot_gdt
    "#,
    stack = sym BOOT_STACK,
    stack_size = const core::mem::size_of::<KernelStack>(),
    entry = sym kernel_entry,
    options(att_syntax)
);

/// Bytes of the first GiB that the boot page tables map at the direct-map offset.
pub const BOOT_DIRECT_MAP_BYTES: u64 = 1 << 30;
