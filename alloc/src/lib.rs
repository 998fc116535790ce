//! The gateway's global allocator: mimalloc (v3), asked for plain blocks wherever a plain
//! block is aligned enough.
//!
//! The `mimalloc` crate asks for every block through `mi_malloc_aligned`, passing the
//! layout's alignment. For blocks above 1 KiB, mimalloc v3 serves an aligned request from
//! its ordinary size classes only when the class is a power of two; any other size
//! (a 3 KiB request future, a 1.5 KiB response buffer) goes through its over-allocating
//! path, which costs a few hundred instructions, wastes the slack, and marks the page as
//! holding interior pointers, which makes every free on it slower. Every block mimalloc
//! hands out is aligned to a machine word, and every block of 16 bytes or more to 16
//! bytes (its `MI_MAX_ALIGN_SIZE`, an invariant it asserts of each block it hands out), so
//! a layout asking for no more than that is served by `mi_malloc` (and `mi_zalloc`,
//! `mi_realloc`) directly; larger alignments still go through the aligned entry points.

#![no_std]
// The one crate of the workspace that allows `unsafe` code: each block says why it is sound.
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

use core::alloc::{GlobalAlloc, Layout};
use core::ffi::c_void;

use libmimalloc_sys as mi;

/// The alignment of every block mimalloc hands out, whatever its size (its smallest size
/// class is one word, and every class is a whole number of words).
const WORD: usize = core::mem::size_of::<usize>();
/// The alignment of every block of at least this many bytes (`MI_MAX_ALIGN_SIZE`).
const MAX_ALIGN: usize = 16;

/// Whether a plain block of `size` bytes is aligned to `align`.
#[inline]
fn plain(size: usize, align: usize) -> bool {
    align <= WORD || (align <= MAX_ALIGN && size >= MAX_ALIGN)
}

/// mimalloc, as the global allocator: `#[global_allocator] static A: Mimalloc = Mimalloc;`.
pub struct Mimalloc;

// SAFETY: every method hands back either null (out of memory) or a block of at least
// `layout.size()` bytes aligned to `layout.align()`: mimalloc's plain entry points are
// used only where their blocks are aligned enough (`plain`), the aligned ones otherwise.
// Blocks from either family are freed by `mi_free`, and mimalloc is thread-safe.
unsafe impl GlobalAlloc for Mimalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let block = if plain(layout.size(), layout.align()) {
            // SAFETY: any size may be asked for; null is returned when out of memory.
            unsafe { mi::mi_malloc(layout.size()) }
        } else {
            // SAFETY: a layout's alignment is a non-zero power of two, as mimalloc requires.
            unsafe { mi::mi_malloc_aligned(layout.size(), layout.align()) }
        };
        block.cast()
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let block = if plain(layout.size(), layout.align()) {
            // SAFETY: as in `alloc`.
            unsafe { mi::mi_zalloc(layout.size()) }
        } else {
            // SAFETY: as in `alloc`.
            unsafe { mi::mi_zalloc_aligned(layout.size(), layout.align()) }
        };
        block.cast()
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: the caller hands back a block this allocator gave out, once; mimalloc
        // frees blocks from its plain and aligned entry points alike.
        unsafe { mi::mi_free(ptr.cast::<c_void>()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let block = if plain(new_size, layout.align()) {
            // SAFETY: `ptr` is a live block of this allocator (the caller's contract); the
            // block that replaces it is plain, and aligned as `layout` asks.
            unsafe { mi::mi_realloc(ptr.cast::<c_void>(), new_size) }
        } else {
            // SAFETY: as above, with the alignment kept by mimalloc's aligned reallocation.
            unsafe { mi::mi_realloc_aligned(ptr.cast::<c_void>(), new_size, layout.align()) }
        };
        block.cast()
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;
    use std::vec::Vec;

    /// Allocates, writes, grows, shrinks and frees blocks of many sizes and alignments
    /// (sizes around mimalloc's size-class edges included), checking each block's
    /// alignment and that its bytes survive each reallocation.
    #[test]
    fn blocks_are_aligned_as_asked_and_keep_their_bytes() {
        let sizes: Vec<usize> = (1..=80).chain([127, 128, 1000, 1024, 1025, 1500, 3200, 4096, 5000, 70_000]).collect();
        let byte = |i: usize| (i % 251) as u8;
        for align in [1, 2, 4, 8, 16, 32, 64, 4096] {
            for &size in &sizes {
                let Ok(layout) = Layout::from_size_align(size, align) else { continue };
                for zeroed in [false, true] {
                    // SAFETY: the layout has a non-zero size, every access stays inside the
                    // block as it is at that point, and each block is freed once, with the
                    // layout it was last given.
                    unsafe {
                        let mut block = if zeroed { Mimalloc.alloc_zeroed(layout) } else { Mimalloc.alloc(layout) };
                        assert!(!block.is_null(), "size {size}, align {align}");
                        assert_eq!(block as usize % align, 0, "size {size}, align {align}");
                        if zeroed {
                            assert!((0..size).all(|i| *block.add(i) == 0), "size {size}, align {align}");
                        }
                        for i in 0..size {
                            *block.add(i) = byte(i);
                        }
                        let mut current = layout;
                        // Grown, then shrunk below the original size.
                        for new_size in [size * 3 + 1, size.div_ceil(2)] {
                            let kept = current.size().min(new_size);
                            block = Mimalloc.realloc(block, current, new_size);
                            assert!(!block.is_null(), "realloc {size} -> {new_size}, align {align}");
                            assert_eq!(block as usize % align, 0, "realloc {size} -> {new_size}, align {align}");
                            assert!((0..kept).all(|i| *block.add(i) == byte(i)), "realloc {size} -> {new_size}");
                            current = Layout::from_size_align(new_size, align).unwrap_or(current);
                        }
                        Mimalloc.dealloc(block, current);
                    }
                }
            }
        }
    }
}
