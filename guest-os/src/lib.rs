//! The guest unikernel runtime: everything a guest app needs to run on the isolation kernel.
//!
//! `_start` (entered by the kernel in ring 3 with the stack at `layout::STACK_TOP`) reads the
//! boot-info page, sets up the heap, installs a `log` backend that writes to the console
//! virtual instruction, runs the app's `main` and exits with its result. A panic prints its
//! message and exits with [`PANIC_EXIT_CODE`].
//!
//! Apps are binaries of this crate that name their entry with [`entry!`].

#![no_std]

extern crate alloc;

pub mod console;
mod heap;
pub mod net;
pub mod rawnic;
pub mod time;

use hypercall_abi::boot_info::BootInfo;
pub use hypercall_abi::guest as vi;
use hypercall_abi::layout::{BOOT_INFO_ADDR, PAGE_SIZE};

/// Exit code of a guest that panicked.
pub const PANIC_EXIT_CODE: i32 = 101;

/// What the app learns about itself at start.
pub struct Env {
    pub id: u32,
    pub name: &'static str,
    /// The arguments from the image manifest, as one string of space-separated words.
    pub args: &'static str,
    /// Where the heap starts (the page after the image) and its size.
    pub heap_base: u64,
    pub heap_size: u64,
    /// The virtual NIC's configuration, if the image gave the guest one (see [`net::open`]).
    pub net: Option<hypercall_abi::vnic::NetConfig>,
}

impl Env {
    /// The arguments, word by word.
    pub fn args(&self) -> impl Iterator<Item = &'static str> {
        self.args.split_ascii_whitespace()
    }

    /// The value of a `key=value` argument.
    pub fn arg(&self, key: &str) -> Option<&'static str> {
        self.args().find_map(|word| word.strip_prefix(key)?.strip_prefix('='))
    }
}

#[global_allocator]
static HEAP: heap::GuestHeap = heap::GuestHeap::empty();

/// Names the app's entry point: `guest_os::entry!(main);` with `fn main(env: &Env) -> i32`.
#[macro_export]
macro_rules! entry {
    ($main:path) => {
        #[no_mangle]
        fn __guest_main(env: &$crate::Env) -> i32 {
            let main: fn(&$crate::Env) -> i32 = $main;
            main(env)
        }
    };
}

extern "Rust" {
    fn __guest_main(env: &Env) -> i32;
}

core::arch::global_asm!(
    r#"
    .section .text._start, "ax", @progbits
    .global _start
_start:
    xorl %ebp, %ebp
    andq $-16, %rsp
    callq {start}
    ud2
    "#,
    start = sym rust_start,
    options(att_syntax)
);

extern "C" fn rust_start() -> ! {
    // SAFETY: the kernel maps the boot-info page read-only at BOOT_INFO_ADDR in every guest
    // before it starts it, and never unmaps or changes it while the guest runs.
    let page: &'static [u8] = unsafe { core::slice::from_raw_parts(BOOT_INFO_ADDR as *const u8, PAGE_SIZE as usize) };
    let info = match BootInfo::decode(page) {
        Ok(info) if info.abi_version == hypercall_abi::ABI_VERSION => info,
        _ => {
            console::write_str("guest-os: boot-info page missing or from another ABI version\n");
            vi::exit(PANIC_EXIT_CODE)
        }
    };
    time::init(info.tsc_hz);
    // SAFETY: the kernel maps [heap_base, heap_base + heap_size) writable for this guest only,
    // backed with zeros on first touch, and nothing else in the guest uses that range.
    unsafe { HEAP.init(info.heap_base as *mut u8, info.heap_size as usize) };
    console::init_logger();
    let env = Env {
        id: info.guest_id,
        name: info.name,
        args: info.args,
        heap_base: info.heap_base,
        heap_size: info.heap_size,
        net: info.net,
    };
    // SAFETY: `__guest_main` is defined by the app binary through `entry!`, with this signature.
    let code = unsafe { __guest_main(&env) };
    vi::exit(code)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    console::print_fmt(format_args!("panic: {info}\n"));
    vi::exit(PANIC_EXIT_CODE)
}
