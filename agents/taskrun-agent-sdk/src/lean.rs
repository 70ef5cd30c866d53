//! What a `#![no_std]` agent needs from its runtime, and a `std` one gets
//! from Rust's `std` and wasi-libc: a global allocator, a panic handler,
//! `cabi_realloc`, `memcmp` and `bcmp`. Only with the `lean` feature.
//!
//! An agent runs single-threaded: one call per Run, in a fresh instance,
//! with no threads. The allocator relies on that.
#![allow(unsafe_code)]

use core::alloc::{GlobalAlloc, Layout};
use core::cell::UnsafeCell;
use core::fmt::{self, Write};
use core::ptr;
use core::sync::atomic::{AtomicBool, Ordering};

use dlmalloc::Dlmalloc;

use crate::bindings::taskrun::agent::log::{Level, log};

/// The allocator's first region: part of the component's initial memory
/// (zeroed, like all of it), so a Run whose heap fits never grows memory.
const ARENA_BYTES: usize = 256 << 10;
const WASM_PAGE: usize = 64 << 10;

struct Arena(UnsafeCell<[u8; ARENA_BYTES]>);

// SAFETY: an agent instance has one thread.
unsafe impl Sync for Arena {}

static ARENA: Arena = Arena(UnsafeCell::new([0; ARENA_BYTES]));
static ARENA_TAKEN: AtomicBool = AtomicBool::new(false);

/// Where dlmalloc gets its regions: the arena first, then `memory.grow`
/// (which the Worker's memory cap may refuse: the allocation then fails).
struct Regions;

// SAFETY: every region handed out is memory nobody else uses: the arena
// once, then pages fresh from `memory.grow`.
unsafe impl dlmalloc::Allocator for Regions {
    fn alloc(&self, size: usize) -> (*mut u8, usize, u32) {
        if size <= ARENA_BYTES && !ARENA_TAKEN.swap(true, Ordering::Relaxed) {
            return (ARENA.0.get().cast(), ARENA_BYTES, 0);
        }
        let pages = size.div_ceil(WASM_PAGE);
        let previous = core::arch::wasm32::memory_grow(0, pages);
        if previous == usize::MAX {
            return (ptr::null_mut(), 0, 0);
        }
        ((previous * WASM_PAGE) as *mut u8, pages * WASM_PAGE, 0)
    }

    fn remap(&self, _ptr: *mut u8, _old: usize, _new: usize, _can_move: bool) -> *mut u8 {
        ptr::null_mut()
    }

    fn free_part(&self, _ptr: *mut u8, _old: usize, _new: usize) -> bool {
        false
    }

    fn free(&self, _ptr: *mut u8, _size: usize) -> bool {
        false
    }

    fn can_release_part(&self, _flags: u32) -> bool {
        false
    }

    fn allocates_zeros(&self) -> bool {
        true
    }

    fn page_size(&self) -> usize {
        WASM_PAGE
    }
}

struct Allocator(UnsafeCell<Dlmalloc<Regions>>);

// SAFETY: an agent instance has one thread, so the allocator is never
// entered twice at once.
unsafe impl Sync for Allocator {}

#[global_allocator]
static ALLOCATOR: Allocator = Allocator(UnsafeCell::new(Dlmalloc::new_with_allocator(Regions)));

// SAFETY: forwards to dlmalloc, which upholds `GlobalAlloc`'s contract; the
// single thread makes the `&mut` unique.
unsafe impl GlobalAlloc for Allocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        unsafe { (*self.0.get()).malloc(layout.size(), layout.align()) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        unsafe { (*self.0.get()).calloc(layout.size(), layout.align()) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { (*self.0.get()).free(ptr, layout.size(), layout.align()) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        unsafe { (*self.0.get()).realloc(ptr, layout.size(), layout.align(), new_size) }
    }
}

/// A panic message, cut to what fits: written without allocating, since
/// the panic may be the allocator's.
struct Message {
    bytes: [u8; 512],
    len: usize,
}

impl Write for Message {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let room = self.bytes.len() - self.len;
        let mut take = s.len().min(room);
        while !s.is_char_boundary(take) {
            take -= 1;
        }
        self.bytes[self.len..self.len + take].copy_from_slice(&s.as_bytes()[..take]);
        self.len += take;
        Ok(())
    }
}

static PANICKING: AtomicBool = AtomicBool::new(false);

/// Logs the panic in the Run's log at error level, then traps: the Worker
/// reports the Run as trapped, like a `std` agent's panic.
#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    if !PANICKING.swap(true, Ordering::Relaxed) {
        let mut message = Message { bytes: [0; 512], len: 0 };
        let _ = write!(message, "agent {info}");
        if let Ok(text) = core::str::from_utf8(&message.bytes[..message.len]) {
            log(Level::Error, text);
        }
    }
    core::arch::wasm32::unreachable()
}

/// The canonical ABI's allocation entry point: the Worker calls it to place
/// the strings and lists it passes in (a `std` agent gets it from wasi-libc).
///
/// # Safety
///
/// Called by the component model's lifting and lowering only, with a block
/// this allocator handed out (or none) and a valid alignment.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cabi_realloc(old_ptr: *mut u8, old_len: usize, align: usize, new_len: usize) -> *mut u8 {
    if new_len == 0 {
        return align as *mut u8;
    }
    let Ok(layout) = Layout::from_size_align(new_len, align) else { core::arch::wasm32::unreachable() };
    let block = if old_len == 0 {
        unsafe { ALLOCATOR.alloc(layout) }
    } else {
        let Ok(old) = Layout::from_size_align(old_len, align) else { core::arch::wasm32::unreachable() };
        unsafe { ALLOCATOR.realloc(old_ptr, old, new_len) }
    };
    if block.is_null() {
        alloc::alloc::handle_alloc_error(layout);
    }
    block
}

/// `memcmp`, which the compiler calls to compare slices and strings of
/// unknown length. A `std` agent gets it from wasi-libc; a lean one from
/// here (the copies and fills become wasm's bulk-memory instructions).
///
/// # Safety
///
/// `a` and `b` must be valid to read for `n` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    for i in 0..n {
        // SAFETY: the caller's promise, `i < n`.
        let (x, y) = unsafe { (*a.add(i), *b.add(i)) };
        if x != y {
            return i32::from(x) - i32::from(y);
        }
    }
    0
}

/// `bcmp`: `memcmp` where only equality counts.
///
/// # Safety
///
/// As [`memcmp`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    unsafe { memcmp(a, b, n) }
}
