//! `weir-control`: the Weir control plane.

fn main() -> std::process::ExitCode {
    weir_management::cli::main()
}
