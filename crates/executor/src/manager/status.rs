//! Reporting what the pool manager holds: instance lists (`kappa fn pods`), the debug snapshot and
//! the instance gauges.

use std::collections::BTreeMap;

use async_trait::async_trait;
use kappa_core::{FunctionId, InstanceInfo, InstanceLister, InstanceState};

use super::{Owner, PoolManager};

impl PoolManager {
    /// Every instance this pool manager holds: warm ones per environment, those being
    /// specialized and the specialized ones per function (`kappa fn pods`, `kappa env pods`).
    pub fn instances(&self) -> Vec<InstanceInfo> {
        let environment_of = |fid: &FunctionId| {
            self.inner
                .cache
                .function(fid)
                .map(|f| FunctionId::new(&f.spec.environment.namespace, &f.spec.environment.name))
        };
        let st = self.state();
        let mut list = Vec::with_capacity(st.total);
        for (env, pool) in &st.pools {
            for instance in &pool.warm {
                list.push(InstanceInfo {
                    id: instance.id.clone(),
                    environment: Some(env.clone()),
                    function: None,
                    state: InstanceState::Warm,
                    generation: None,
                    in_flight: 0,
                    capacity: 0,
                    served: 0,
                    address: instance.addr.to_string(),
                });
            }
        }
        for (id, owner) in &st.owners {
            if let Owner::Specializing(fid) = owner {
                list.push(InstanceInfo {
                    id: id.clone(),
                    environment: environment_of(fid),
                    function: Some(fid.clone()),
                    state: InstanceState::Specializing,
                    generation: None,
                    in_flight: 0,
                    capacity: 0,
                    served: 0,
                    address: String::new(),
                });
            }
        }
        for (fid, function) in &st.functions {
            let environment = environment_of(fid);
            for (id, instance) in &function.instances {
                let endpoint = &instance.endpoint;
                list.push(InstanceInfo {
                    id: id.clone(),
                    environment: environment.clone(),
                    function: Some(fid.clone()),
                    state: if endpoint.is_draining() {
                        InstanceState::Draining
                    } else {
                        InstanceState::Ready
                    },
                    generation: Some(endpoint.generation),
                    in_flight: endpoint.in_flight(),
                    capacity: endpoint.capacity,
                    served: endpoint.served(),
                    address: endpoint.addr.to_string(),
                });
            }
        }
        drop(st);
        list.sort_by(|a, b| {
            (&a.function, &a.environment, &a.id).cmp(&(&b.function, &b.environment, &b.id))
        });
        list
    }

    /// A JSON view of pools and instances, for debugging endpoints.
    pub fn snapshot(&self) -> serde_json::Value {
        let st = self.state();
        let pools: BTreeMap<String, serde_json::Value> = st
            .pools
            .iter()
            .map(|(id, p)| {
                (
                    id.to_string(),
                    serde_json::json!({
                        "generation": p.generation,
                        "warm": p.warm.iter().map(|i| i.id.clone()).collect::<Vec<_>>(),
                        "starting": p.starting,
                        "lastError": p.last_error,
                    }),
                )
            })
            .collect();
        let functions: BTreeMap<String, serde_json::Value> = st
            .functions
            .iter()
            .map(|(id, f)| {
                let instances: Vec<_> = f
                    .instances
                    .iter()
                    .map(|(iid, i)| {
                        serde_json::json!({
                            "id": iid,
                            "addr": i.endpoint.addr.to_string(),
                            "generation": i.endpoint.generation,
                            "inFlight": i.endpoint.in_flight(),
                            "draining": i.endpoint.is_draining(),
                            "served": i.endpoint.served(),
                        })
                    })
                    .collect();
                (
                    id.to_string(),
                    serde_json::json!({ "instances": instances, "specializing": f.inflight.len() }),
                )
            })
            .collect();
        let instances = st.total;
        drop(st);
        serde_json::json!({
            "pools": pools,
            "functions": functions,
            "deployments": self.deployments_snapshot(),
            "instances": instances,
        })
    }

    pub(super) fn update_gauges(&self) {
        use crate::metrics::{EnvLabels, FunctionLabels};
        let (warm, functions) = {
            let st = self.state();
            let warm: Vec<(EnvLabels, i64)> = st
                .pools
                .iter()
                .map(|(env, pool)| {
                    (
                        EnvLabels {
                            namespace: env.namespace.to_string(),
                            environment: env.name.to_string(),
                        },
                        pool.warm.len() as i64,
                    )
                })
                .collect();
            let functions: Vec<(FunctionLabels, i64, i64)> = st
                .functions
                .iter()
                .filter(|(_, f)| !f.instances.is_empty() || !f.inflight.is_empty())
                .map(|(fid, f)| {
                    (
                        FunctionLabels {
                            namespace: fid.namespace.to_string(),
                            function: fid.name.to_string(),
                        },
                        f.instances.len() as i64,
                        f.inflight.len() as i64,
                    )
                })
                .collect();
            (warm, functions)
        };
        self.inner.metrics.set_instances(warm, functions);
    }
}

#[async_trait]
impl InstanceLister for PoolManager {
    async fn instances(&self) -> Result<Vec<InstanceInfo>, String> {
        Ok(PoolManager::instances(self))
    }
}
