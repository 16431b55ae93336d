//! The committed CRDs in `charts/kappa/crds/` are exactly what the generator writes today.

use std::path::Path;

use kappa_kube::crd;

#[test]
fn committed_crds_match_a_fresh_generation() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../charts/kappa/crds");
    let regenerate = "regenerate with `cargo run -p kappa-kube --bin kappa-crdgen`";
    let mut stale = Vec::new();
    for (file, definition) in crd::all_crds() {
        let fresh = crd::crd_yaml(&definition).unwrap();
        match std::fs::read_to_string(dir.join(&file)) {
            Ok(committed) if committed == fresh => {}
            Ok(_) => stale.push(format!("{file} differs")),
            Err(e) => stale.push(format!("{file} is missing ({e})")),
        }
        super::mock::write_manifest(&format!("crd-{file}").replace(".yaml", ""), &definition);
    }
    assert!(
        stale.is_empty(),
        "charts/kappa/crds is stale: {stale:?}; {regenerate}"
    );
}
