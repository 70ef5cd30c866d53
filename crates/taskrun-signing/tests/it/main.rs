//! taskrun-signing's tests: one binary, one module per area.

mod envelope;
mod keys;
mod policy;
mod props;
mod support;
mod vectors;
mod verify;

/// Counts the bytes each thread allocates, so tests can bound what parsing
/// untrusted input allocates. Per thread, so parallel tests don't interfere.
#[allow(unsafe_code)]
mod alloc_count {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    thread_local! {
        static ALLOCATED: Cell<usize> = const { Cell::new(0) };
    }

    fn add(n: usize) {
        let _ = ALLOCATED.try_with(|a| a.set(a.get().saturating_add(n)));
    }

    struct Counting;

    // SAFETY: every call is forwarded unchanged to the system allocator.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            add(layout.size());
            // SAFETY: same contract as the caller's.
            unsafe { System.alloc(layout) }
        }

        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            add(layout.size());
            // SAFETY: same contract as the caller's.
            unsafe { System.alloc_zeroed(layout) }
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: same contract as the caller's.
            unsafe { System.dealloc(ptr, layout) }
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            add(new_size);
            // SAFETY: same contract as the caller's.
            unsafe { System.realloc(ptr, layout, new_size) }
        }
    }

    #[global_allocator]
    static GLOBAL: Counting = Counting;

    /// Runs `f` and returns its result with the bytes it allocated (in total,
    /// not at peak) on this thread.
    pub fn allocated_by<R>(f: impl FnOnce() -> R) -> (R, usize) {
        let before = ALLOCATED.with(Cell::get);
        let r = f();
        (r, ALLOCATED.with(Cell::get) - before)
    }
}
