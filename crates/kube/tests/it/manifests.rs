//! Objects built without IO, serialised for the schema validation step.

use std::collections::BTreeMap;
use std::time::Duration;

use kappa_core::{FunctionId, InstanceSpec, Limits};
use kappa_kube::pods::{Placement, PodTemplate, pool_pod};
use kappa_types::Toleration;

use super::mock::write_manifest;

pub fn instance_spec(id: &str) -> InstanceSpec {
    InstanceSpec {
        id: id.into(),
        environment: FunctionId::new("default", "python"),
        env_generation: 2,
        image: "ghcr.io/example/python-env:1.0".into(),
        command: None,
        limits: Limits {
            memory_bytes: Some(128 << 20),
            cpu_millis: Some(250),
            pids: Some(1024),
        },
        grace: Duration::from_secs(30),
        concurrency: 64,
        env: BTreeMap::from([("LOG_LEVEL".into(), "debug".into())]),
        labels: BTreeMap::new(),
        egress: true,
        host_ports: Vec::new(),
        zygote: None,
    }
}

#[test]
fn pool_pod_with_placement_serialises() {
    let placement = Placement {
        requests: kappa_types::ResourceList {
            cpu: Some("100m".into()),
            memory: Some("64Mi".into()),
            pids: None,
        },
        node_selector: BTreeMap::from([("kappa.dev/pool".into(), "functions".into())]),
        tolerations: vec![Toleration {
            key: Some("dedicated".into()),
            operator: Some("Equal".into()),
            value: Some("functions".into()),
            effect: Some("NoSchedule".into()),
            toleration_seconds: None,
        }],
    };
    let template = PodTemplate {
        image_pull_policy: Some("IfNotPresent".into()),
        image_pull_secrets: vec!["registry".into()],
        service_account: Some("kappa-function".into()),
        ..PodTemplate::default()
    };
    let pod = pool_pod(
        &template,
        &instance_spec("python-placed0001"),
        &placement,
        &kappa_runtime::pod_fetcher_token("key", "python-placed0001"),
    );
    let json = serde_json::to_value(&pod).unwrap();
    assert_eq!(json["spec"]["nodeSelector"]["kappa.dev/pool"], "functions");
    assert_eq!(json["spec"]["tolerations"][0]["key"], "dedicated");
    assert_eq!(
        json["spec"]["containers"][0]["resources"]["requests"]["cpu"],
        "100m"
    );
    assert_eq!(json["spec"]["imagePullSecrets"][0]["name"], "registry");
    write_manifest("pod-pool-placed", &pod);
}
