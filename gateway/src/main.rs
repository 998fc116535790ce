//! The `weir` gateway binary.
#![forbid(unsafe_code)]

#[global_allocator]
static ALLOCATOR: weir_alloc::Mimalloc = weir_alloc::Mimalloc;

fn main() -> std::process::ExitCode {
    weir_gateway::cli::main()
}
