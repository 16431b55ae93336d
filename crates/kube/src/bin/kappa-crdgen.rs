//! Writes the CRDs of Kappa's kinds, one YAML file per kind, into `charts/kappa/crds/` (or the
//! directory given as the only argument). Run it after changing a spec type in `kappa-types`:
//!
//! ```text
//! cargo run -p kappa-kube --bin kappa-crdgen
//! ```
//!
//! The `crds` test of `kappa-kube` fails when the committed files differ from a fresh run.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let dir = std::env::args_os().nth(1).map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../charts/kappa/crds"),
        PathBuf::from,
    );
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!("kappa-crdgen: creating {}: {e}", dir.display());
        return ExitCode::FAILURE;
    }
    for (file, crd) in kappa_kube::crd::all_crds() {
        let path = dir.join(&file);
        let yaml = match kappa_kube::crd::crd_yaml(&crd) {
            Ok(yaml) => yaml,
            Err(e) => {
                eprintln!("kappa-crdgen: serialising {file}: {e}");
                return ExitCode::FAILURE;
            }
        };
        if let Err(e) = std::fs::write(&path, yaml) {
            eprintln!("kappa-crdgen: writing {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
        println!("wrote {}", path.display());
    }
    ExitCode::SUCCESS
}
