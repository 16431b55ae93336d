//! The sandbox helper on its own, for the local backend's tests and for running the backend
//! from a program that does not hand control to `kappa_sandbox::run_if_requested` itself (the
//! `kappa` binary does, and is its own helper).

fn main() {
    match kappa_sandbox::run_if_requested() {
        Some(code) => std::process::exit(code),
        None => {
            eprintln!(
                "kappa-sandbox: this program is started by Kappa's local backend, with {} set",
                kappa_sandbox::STAGE_VAR
            );
            std::process::exit(2);
        }
    }
}
