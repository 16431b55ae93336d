//! Admission: what each kind checks and rewrites before it is written (references to other
//! resources, archives, routes), and what must not be deleted while in use.
//!
//! Every function here runs with the API's write lock held, so its checks stay true until the
//! write that follows them.

use async_trait::async_trait;
use base64::Engine;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use kappa_types::{
    Archive, ArchiveType, BuildStatus, CONFIG_DATA_LIMIT, ConfigMapSpec, EnvironmentSpec,
    FunctionReferenceType, FunctionSpec, HttpTriggerSpec, Kind, LITERAL_SIZE_LIMIT,
    MessageQueueTriggerSpec, PackageSpec, PackageStatus, Resource, SecretSpec, Spec,
    TimeTriggerSpec,
};

use crate::error::ApiError;
use crate::redact::REDACTED;
use crate::resources::decode_stored;
use crate::state::ApiState;

/// Base64 as users write it: standard alphabet, padding optional.
pub(crate) const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// What an admission did that must be undone if the store write then fails.
#[derive(Debug, Default)]
pub(crate) struct Admitted {
    /// Archives this admission added to the archive store (literals moved there).
    new_blobs: Vec<String>,
    /// Function versions this admission recorded, as (namespace, stored name).
    pub(crate) new_versions: Vec<(String, String)>,
}

impl Admitted {
    /// Removes what the admission added. Best effort: a failure leaves an unreferenced blob.
    pub(crate) async fn roll_back(self, state: &ApiState) {
        for (namespace, name) in self.new_versions {
            if let Err(e) = state
                .store
                .delete(
                    Kind::FunctionVersion,
                    &namespace,
                    &name,
                    kappa_store::Precondition::MustExist,
                )
                .await
            {
                tracing::warn!(version = %name, error = %e, "removing a function version after a failed write");
            }
        }
        for sha in self.new_blobs {
            if let Err(e) = state.archives.delete(&sha).await {
                tracing::warn!(sha256 = %sha, error = %e, "removing an archive after a failed write");
            }
        }
    }
}

/// The per-kind admission rules.
#[async_trait]
pub(crate) trait Admit: Spec {
    /// JSON pointers to this kind's namespaced references (`/*` = every array element), which
    /// default to the referrer's namespace.
    const REFERENCES: &'static [&'static str] = &[];

    /// Checks references and rewrites the resource before it is written; `old` is the stored
    /// resource on replace. Writes nothing to the store.
    async fn admit(
        _state: &ApiState,
        _object: &mut Resource<Self>,
        _old: Option<&Resource<Self>>,
    ) -> Result<Admitted, ApiError> {
        Ok(Admitted::default())
    }

    /// What uses the resource `namespace/name` and so blocks its deletion, as
    /// `"function default/hello"` strings.
    async fn dependents(
        _state: &ApiState,
        _namespace: &str,
        _name: &str,
    ) -> Result<Vec<String>, ApiError> {
        Ok(Vec::new())
    }

    /// The status a new resource is stored with (clients do not write status on create).
    fn initial_status(_object: &Resource<Self>) -> Self::Status {
        Self::Status::default()
    }

    /// Runs after the resource was written (create or replace). Best effort: a failure is
    /// logged, the write stands.
    async fn after_write(_state: &ApiState, _object: &Resource<Self>) {}

    /// A status to write after a replace, when the new spec changes it.
    fn status_after_update(_old: &Resource<Self>, _new: &Resource<Self>) -> Option<Self::Status> {
        None
    }
}

/// Every readable resource of a kind, in one namespace or all. Unreadable ones are skipped
/// with a warning: they cannot reference anything anyone could rely on.
pub(crate) async fn list_typed<S: Spec>(
    state: &ApiState,
    namespace: Option<&str>,
) -> Result<Vec<Resource<S>>, ApiError> {
    let list = state.store.list(S::KIND, namespace).await?;
    Ok(list
        .items
        .iter()
        .filter_map(|o| match decode_stored::<S>(o) {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::warn!(error = %e, "skipping an unreadable stored resource");
                None
            }
        })
        .collect())
}

/// Fails with `invalid` naming `field` unless `kind` `namespace/name` exists.
pub(crate) async fn require(
    state: &ApiState,
    kind: Kind,
    namespace: &str,
    name: &str,
    field: &str,
) -> Result<(), ApiError> {
    if state.store.get(kind, namespace, name).await?.is_some() {
        return Ok(());
    }
    Err(ApiError::invalid(
        field,
        format!(
            "{} {name:?} does not exist in namespace {namespace:?}: create it first",
            kind.as_str().to_lowercase()
        ),
    ))
}

/// Refuses a runtime the backend cannot run (see [`crate::RuntimeCheck`]).
pub(crate) fn check_runtime(state: &ApiState, spec: &EnvironmentSpec) -> Result<(), ApiError> {
    match &state.runtime_check {
        Some(check) => check
            .check(&spec.runtime.image, spec.runtime.command.as_deref())
            .map_err(|message| ApiError::invalid("spec.runtime.image", message)),
        None => Ok(()),
    }
}

#[async_trait]
impl Admit for EnvironmentSpec {
    async fn admit(
        state: &ApiState,
        object: &mut Resource<Self>,
        _old: Option<&Resource<Self>>,
    ) -> Result<Admitted, ApiError> {
        check_runtime(state, &object.spec)?;
        Ok(Admitted::default())
    }

    async fn dependents(
        state: &ApiState,
        namespace: &str,
        name: &str,
    ) -> Result<Vec<String>, ApiError> {
        Ok(list_typed::<FunctionSpec>(state, None)
            .await?
            .into_iter()
            .filter(|f| {
                f.spec.environment.namespace == namespace && f.spec.environment.name == name
            })
            .map(|f| format!("function {}/{}", f.metadata.namespace, f.metadata.name))
            .collect())
    }
}

/// A package archive checked and ready to be stored.
enum Prepared {
    /// Decoded literal bytes, to be moved to the archive store.
    Literal { bytes: Vec<u8>, sha256: String },
    /// Nothing to move (already in the archive store, or an external URL).
    Keep,
}

/// Checks one archive of a package (`path` is `spec.source` or `spec.deployment`) without
/// writing anything: a literal must be base64 within the size limit and match its checksum; an
/// `archive://sha256/<hex>` must be in the archive store and match its checksum.
async fn prepare_archive(
    state: &ApiState,
    archive: &Archive,
    path: &str,
) -> Result<Prepared, ApiError> {
    match archive.kind {
        ArchiveType::Literal => {
            let text: String = archive
                .literal
                .as_deref()
                .unwrap_or_default()
                .chars()
                .filter(|c| !c.is_ascii_whitespace())
                .collect();
            let bytes = BASE64.decode(text.as_bytes()).map_err(|e| {
                ApiError::invalid(
                    format!("{path}.literal"),
                    format!("is not valid base64: {e}"),
                )
            })?;
            if bytes.len() > LITERAL_SIZE_LIMIT {
                return Err(ApiError::invalid(
                    format!("{path}.literal"),
                    format!(
                        "is {} bytes, larger than the {LITERAL_SIZE_LIMIT} bytes a literal may hold: upload it to /v1/archives and use its url",
                        bytes.len()
                    ),
                ));
            }
            let sha256 = kappa_archive::sha256_hex(&bytes);
            if let Some(checksum) = &archive.checksum
                && checksum.sum != sha256
            {
                return Err(ApiError::invalid(
                    format!("{path}.checksum.sum"),
                    format!("does not match the literal, whose sha256 is {sha256}"),
                ));
            }
            Ok(Prepared::Literal { bytes, sha256 })
        }
        ArchiveType::Url => {
            let Some(sha256) = archive.stored_sha256() else {
                return Ok(Prepared::Keep);
            };
            if let Some(checksum) = &archive.checksum
                && checksum.sum != sha256
            {
                return Err(ApiError::invalid(
                    format!("{path}.checksum.sum"),
                    format!("does not match the url's sha256 {sha256}"),
                ));
            }
            if state.archives.info(sha256).await?.is_none() {
                return Err(ApiError::invalid(
                    format!("{path}.url"),
                    format!(
                        "archive {sha256} is not in the archive store: upload it first (POST /v1/archives)"
                    ),
                ));
            }
            // Archives stored before uploads were checked may still be unsafe.
            state
                .archives
                .check(sha256)
                .await
                .map_err(|e| archive_refused(e, format!("{path}.url")))?;
            Ok(Prepared::Keep)
        }
    }
}

/// An archive the store refused, as an error on `field`; other failures keep their mapping.
fn archive_refused(e: kappa_archive::ArchiveError, field: String) -> ApiError {
    match e {
        kappa_archive::ArchiveError::Unsafe { .. } | kappa_archive::ArchiveError::Corrupt(_) => {
            ApiError::invalid(field, e.to_string())
        }
        other => other.into(),
    }
}

/// Moves a prepared literal into the archive store and points `archive` at it.
async fn store_archive(
    state: &ApiState,
    archive: &mut Option<Archive>,
    prepared: Prepared,
    admitted: &mut Admitted,
    path: &str,
) -> Result<(), ApiError> {
    let (Prepared::Literal { bytes, sha256 }, Some(current)) = (prepared, archive.as_ref()) else {
        return Ok(());
    };
    let existed = state.archives.info(&sha256).await?.is_some();
    let info = state
        .archives
        .put_bytes(&bytes)
        .await
        .map_err(|e| archive_refused(e, format!("{path}.literal")))?;
    if !existed {
        admitted.new_blobs.push(info.sha256.clone());
    }
    tracing::debug!(sha256 = %info.sha256, size = info.size, "moved a literal archive to the archive store");
    *archive = Some(Archive::stored(&info.sha256, current.filename.clone()));
    Ok(())
}

fn desired_build_status(spec: &PackageSpec) -> BuildStatus {
    if spec.source.is_some() {
        BuildStatus::Pending
    } else {
        BuildStatus::None
    }
}

#[async_trait]
impl Admit for PackageSpec {
    const REFERENCES: &'static [&'static str] = &["/spec/environment"];

    async fn admit(
        state: &ApiState,
        object: &mut Resource<Self>,
        _old: Option<&Resource<Self>>,
    ) -> Result<Admitted, ApiError> {
        let env = &object.spec.environment;
        require(
            state,
            Kind::Environment,
            &env.namespace,
            &env.name,
            "spec.environment.name",
        )
        .await?;
        // Check both archives before moving either, so a bad one leaves nothing behind.
        let source = match &object.spec.source {
            Some(a) => prepare_archive(state, a, "spec.source").await?,
            None => Prepared::Keep,
        };
        let deployment = match &object.spec.deployment {
            Some(a) => prepare_archive(state, a, "spec.deployment").await?,
            None => Prepared::Keep,
        };
        let mut admitted = Admitted::default();
        let moved = async {
            store_archive(
                state,
                &mut object.spec.source,
                source,
                &mut admitted,
                "spec.source",
            )
            .await?;
            store_archive(
                state,
                &mut object.spec.deployment,
                deployment,
                &mut admitted,
                "spec.deployment",
            )
            .await
        }
        .await;
        match moved {
            Ok(()) => Ok(admitted),
            Err(e) => {
                admitted.roll_back(state).await;
                Err(e)
            }
        }
    }

    async fn dependents(
        state: &ApiState,
        namespace: &str,
        name: &str,
    ) -> Result<Vec<String>, ApiError> {
        Ok(list_typed::<FunctionSpec>(state, None)
            .await?
            .into_iter()
            .filter(|f| {
                let p = &f.spec.package.packageref;
                p.namespace == namespace && p.name == name
            })
            .map(|f| format!("function {}/{}", f.metadata.namespace, f.metadata.name))
            .collect())
    }

    fn initial_status(object: &Resource<Self>) -> PackageStatus {
        PackageStatus {
            buildstatus: desired_build_status(&object.spec),
            ..PackageStatus::default()
        }
    }

    fn status_after_update(old: &Resource<Self>, new: &Resource<Self>) -> Option<PackageStatus> {
        let desired = desired_build_status(&new.spec);
        let rebuild = desired == BuildStatus::Pending && old.spec.source != new.spec.source;
        if old.status.buildstatus == desired && !rebuild {
            return None;
        }
        Some(PackageStatus {
            buildstatus: desired,
            buildlog: if rebuild {
                String::new()
            } else {
                old.status.buildlog.clone()
            },
            last_update_timestamp: old.status.last_update_timestamp.clone(),
        })
    }
}

#[async_trait]
impl Admit for FunctionSpec {
    const REFERENCES: &'static [&'static str] = &[
        "/spec/environment",
        "/spec/package/packageref",
        "/spec/secrets/*",
        "/spec/configmaps/*",
    ];

    async fn admit(
        state: &ApiState,
        object: &mut Resource<Self>,
        old: Option<&Resource<Self>>,
    ) -> Result<Admitted, ApiError> {
        let env = &object.spec.environment;
        require(
            state,
            Kind::Environment,
            &env.namespace,
            &env.name,
            "spec.environment.name",
        )
        .await?;
        let pkg = &object.spec.package.packageref;
        require(
            state,
            Kind::Package,
            &pkg.namespace,
            &pkg.name,
            "spec.package.packageref.name",
        )
        .await?;
        for (i, secret) in object.spec.secrets.iter().enumerate() {
            require(
                state,
                Kind::Secret,
                &secret.namespace,
                &secret.name,
                &format!("spec.secrets[{i}].name"),
            )
            .await?;
        }
        for (i, config) in object.spec.configmaps.iter().enumerate() {
            require(
                state,
                Kind::ConfigMap,
                &config.namespace,
                &config.name,
                &format!("spec.configmaps[{i}].name"),
            )
            .await?;
        }
        let mut admitted = Admitted::default();
        if let Some(created) = crate::versions::record(state, object, old).await? {
            admitted.new_versions.push(created);
        }
        Ok(admitted)
    }

    async fn after_write(state: &ApiState, object: &Resource<Self>) {
        if let Err(e) =
            crate::versions::collect(state, &object.metadata.namespace, &object.metadata.name).await
        {
            tracing::warn!(function = %object.metadata.name, error = %e, "collecting old function versions failed");
        }
    }
}

/// The functions (`"function default/hello"`) whose `refs` name `namespace/name`, plus, for
/// secrets, the message queue triggers whose connection secret it is.
async fn config_users(
    state: &ApiState,
    kind: Kind,
    namespace: &str,
    name: &str,
) -> Result<Vec<String>, ApiError> {
    let mut users: Vec<String> = list_typed::<FunctionSpec>(state, None)
        .await?
        .into_iter()
        .filter(|f| {
            let refs = match kind {
                Kind::Secret => &f.spec.secrets,
                _ => &f.spec.configmaps,
            };
            refs.iter()
                .any(|r| r.namespace == namespace && r.name == name)
        })
        .map(|f| format!("function {}/{}", f.metadata.namespace, f.metadata.name))
        .collect();
    if kind == Kind::Secret {
        users.extend(
            list_typed::<MessageQueueTriggerSpec>(state, Some(namespace))
                .await?
                .into_iter()
                .filter(|t| t.spec.secret.as_deref() == Some(name))
                .map(|t| {
                    format!(
                        "message queue trigger {}/{}",
                        t.metadata.namespace, t.metadata.name
                    )
                }),
        );
    }
    Ok(users)
}

/// What a trigger's route is matched on: host (lower case, port ignored; `*` for any), path
/// (parameter names ignored: `/users/{id}` and `/users/{uid}` are the same route) and methods.
#[derive(Debug, PartialEq, Eq)]
struct RouteKey {
    host: String,
    path: String,
    methods: Vec<String>,
}

impl RouteKey {
    fn of(spec: &HttpTriggerSpec) -> Self {
        let host = match &spec.host {
            None => "*".to_string(),
            Some(h) => {
                let h = h.to_ascii_lowercase();
                match h.rsplit_once(':') {
                    Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => {
                        name.to_string()
                    }
                    _ => h,
                }
            }
        };
        let raw = spec
            .prefix
            .as_deref()
            .or(spec.relativeurl.as_deref())
            .unwrap_or("/");
        let path = raw
            .split('/')
            .map(
                |seg| match seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                    Some(inner) if inner.starts_with('*') => "{*}",
                    Some(_) => "{}",
                    None => seg,
                },
            )
            .collect::<Vec<_>>()
            .join("/");
        let methods = spec
            .effective_methods()
            .into_iter()
            .map(|m| m.to_ascii_uppercase())
            .collect();
        Self {
            host,
            path,
            methods,
        }
    }

    /// The first method both keys serve on the same host and path.
    fn overlap(&self, other: &RouteKey) -> Option<&str> {
        if self.host != other.host || self.path != other.path {
            return None;
        }
        self.methods
            .iter()
            .find(|m| other.methods.contains(m))
            .map(String::as_str)
    }
}

#[async_trait]
impl Admit for HttpTriggerSpec {
    async fn admit(
        state: &ApiState,
        object: &mut Resource<Self>,
        _old: Option<&Resource<Self>>,
    ) -> Result<Admitted, ApiError> {
        let namespace = object.metadata.namespace.clone();
        let field = match object.spec.functionref.kind {
            FunctionReferenceType::Name => "spec.functionref.name",
            FunctionReferenceType::FunctionWeights => "spec.functionref.functionweights",
        };
        for function in object.spec.functionref.function_names() {
            crate::versions::require_function_ref(state, &namespace, function, field).await?;
        }
        let key = RouteKey::of(&object.spec);
        for other in list_typed::<HttpTriggerSpec>(state, None).await? {
            if other.metadata.namespace == namespace && other.metadata.name == object.metadata.name
            {
                continue;
            }
            if let Some(method) = key.overlap(&RouteKey::of(&other.spec)) {
                let field = if object.spec.prefix.is_some() {
                    "spec.prefix"
                } else {
                    "spec.relativeurl"
                };
                let host = object.spec.host.as_deref().unwrap_or("any host");
                return Err(ApiError::conflict(
                    Some(field),
                    format!(
                        "route {method} {} on {host} is already served by httptrigger {}/{}",
                        object
                            .spec
                            .prefix
                            .as_deref()
                            .or(object.spec.relativeurl.as_deref())
                            .unwrap_or("/"),
                        other.metadata.namespace,
                        other.metadata.name
                    ),
                ));
            }
        }
        Ok(Admitted::default())
    }
}

#[async_trait]
impl Admit for MessageQueueTriggerSpec {
    async fn admit(
        state: &ApiState,
        object: &mut Resource<Self>,
        _old: Option<&Resource<Self>>,
    ) -> Result<Admitted, ApiError> {
        let namespace = object.metadata.namespace.clone();
        require(
            state,
            Kind::Function,
            &namespace,
            &object.spec.functionref.name,
            "spec.functionref.name",
        )
        .await?;
        if let Some(secret) = &object.spec.secret {
            require(state, Kind::Secret, &namespace, secret, "spec.secret").await?;
        }
        Ok(Admitted::default())
    }
}

#[async_trait]
impl Admit for TimeTriggerSpec {
    async fn admit(
        state: &ApiState,
        object: &mut Resource<Self>,
        _old: Option<&Resource<Self>>,
    ) -> Result<Admitted, ApiError> {
        // The full parse the scheduler does (the spec's validation only checks the shape).
        kappa_types::Schedule::parse(&object.spec.cron)
            .map_err(|e| ApiError::invalid("spec.cron", e.to_string()))?;
        let namespace = object.metadata.namespace.clone();
        require(
            state,
            Kind::Function,
            &namespace,
            &object.spec.functionref.name,
            "spec.functionref.name",
        )
        .await?;
        Ok(Admitted::default())
    }
}

/// Folds a Secret's `stringData` into `data` (base64) and checks every `data` value is base64.
/// On replace, a value still [`REDACTED`] (sent back as read) keeps the stored value. No error
/// quotes a value or the decoder's detail (which names the offending byte).
fn admit_secret(spec: &mut SecretSpec, old: Option<&SecretSpec>) -> Result<(), ApiError> {
    for (key, value) in spec.data.iter_mut() {
        let field = format!("spec.data.{key}");
        if value == REDACTED {
            match old.and_then(|o| o.data.get(key)) {
                Some(stored) => *value = stored.clone(),
                None => {
                    return Err(ApiError::invalid(
                        field,
                        format!(
                            "is {REDACTED:?}, which keeps a stored value, but the secret has no stored value for this key"
                        ),
                    ));
                }
            }
            continue;
        }
        let compact: String = value.chars().filter(|c| !c.is_ascii_whitespace()).collect();
        let bytes = BASE64.decode(compact.as_bytes()).map_err(|_| {
            ApiError::invalid(
                field.clone(),
                "is not valid base64 (standard alphabet): put plain text in spec.stringData instead",
            )
        })?;
        // Canonical form, so equal values are stored equal.
        *value = base64::engine::general_purpose::STANDARD.encode(bytes);
    }
    for (key, value) in std::mem::take(&mut spec.string_data) {
        if value == REDACTED && old.is_some_and(|o| o.data.contains_key(&key)) {
            // Sent back as read: keep what is stored (already in `data` unless replaced there).
            if let Some(stored) = old.and_then(|o| o.data.get(&key)) {
                spec.data.entry(key).or_insert_with(|| stored.clone());
            }
            continue;
        }
        spec.data
            .insert(key, base64::engine::general_purpose::STANDARD.encode(value));
    }
    let total: usize = spec
        .data
        .values()
        .map(|v| BASE64.decode(v.as_bytes()).map_or(0, |b| b.len()))
        .sum();
    if total > CONFIG_DATA_LIMIT {
        return Err(ApiError::invalid(
            "spec.data",
            format!(
                "values hold {total} bytes in total, more than the {CONFIG_DATA_LIMIT} bytes a secret may hold"
            ),
        ));
    }
    Ok(())
}

#[async_trait]
impl Admit for SecretSpec {
    async fn admit(
        _state: &ApiState,
        object: &mut Resource<Self>,
        old: Option<&Resource<Self>>,
    ) -> Result<Admitted, ApiError> {
        admit_secret(&mut object.spec, old.map(|o| &o.spec))?;
        Ok(Admitted::default())
    }

    async fn dependents(
        state: &ApiState,
        namespace: &str,
        name: &str,
    ) -> Result<Vec<String>, ApiError> {
        config_users(state, Kind::Secret, namespace, name).await
    }
}

#[async_trait]
impl Admit for ConfigMapSpec {
    async fn dependents(
        state: &ApiState,
        namespace: &str,
        name: &str,
    ) -> Result<Vec<String>, ApiError> {
        config_users(state, Kind::ConfigMap, namespace, name).await
    }
}

/// The packages (`"package default/hello"`) that reference archive `sha256`.
/// The digests of every stored archive some Package's source or deployment names.
pub(crate) async fn archives_in_use(
    state: &ApiState,
) -> Result<std::collections::HashSet<String>, ApiError> {
    let mut used: std::collections::HashSet<String> = list_typed::<PackageSpec>(state, None)
        .await?
        .iter()
        .flat_map(|p| [&p.spec.source, &p.spec.deployment])
        .flatten()
        .filter_map(|a| a.stored_sha256().map(str::to_owned))
        .collect();
    // A kept function version keeps its code.
    used.extend(
        list_typed::<kappa_types::FunctionVersionSpec>(state, None)
            .await?
            .iter()
            .flat_map(|v| [&v.spec.source, &v.spec.deployment])
            .flatten()
            .filter_map(|a| a.stored_sha256().map(str::to_owned)),
    );
    Ok(used)
}

pub(crate) async fn archive_users(state: &ApiState, sha256: &str) -> Result<Vec<String>, ApiError> {
    Ok(list_typed::<PackageSpec>(state, None)
        .await?
        .into_iter()
        .filter(|p| {
            [&p.spec.source, &p.spec.deployment]
                .into_iter()
                .flatten()
                .any(|a| a.stored_sha256() == Some(sha256))
        })
        .map(|p| format!("package {}/{}", p.metadata.namespace, p.metadata.name))
        .chain(
            list_typed::<kappa_types::FunctionVersionSpec>(state, None)
                .await?
                .into_iter()
                .filter(|v| {
                    [&v.spec.source, &v.spec.deployment]
                        .into_iter()
                        .flatten()
                        .any(|a| a.stored_sha256() == Some(sha256))
                })
                .map(|v| {
                    format!(
                        "function version {}/{}@{}",
                        v.metadata.namespace, v.spec.function, v.spec.version
                    )
                }),
        )
        .collect())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use kappa_types::FunctionReference;

    use super::*;

    fn trigger(host: Option<&str>, url: &str, methods: &[&str]) -> HttpTriggerSpec {
        HttpTriggerSpec {
            host: host.map(str::to_string),
            relativeurl: Some(url.into()),
            methods: methods.iter().map(|m| m.to_string()).collect(),
            functionref: FunctionReference::name("f"),
            ..HttpTriggerSpec::default()
        }
    }

    #[test]
    fn route_keys_overlap() {
        let a = RouteKey::of(&trigger(None, "/users/{id}", &[]));
        let b = RouteKey::of(&trigger(None, "/users/{uid}", &["GET", "POST"]));
        assert_eq!(a.overlap(&b), Some("GET"));
        let c = RouteKey::of(&trigger(None, "/users/{id}", &["POST"]));
        assert_eq!(a.overlap(&c), None);
        let d = RouteKey::of(&trigger(Some("Example.com:8080"), "/users/{id}", &[]));
        let e = RouteKey::of(&trigger(Some("example.com"), "/users/{x}", &[]));
        assert_eq!(d.overlap(&e), Some("GET"));
        assert_eq!(a.overlap(&d), None);
    }

    #[test]
    fn secrets_fold_string_data_and_check_base64() {
        let mut spec = SecretSpec::default();
        spec.data.insert("a".into(), "aGk".into()); // "hi", unpadded
        spec.string_data.insert("b".into(), "plain".into());
        admit_secret(&mut spec, None).unwrap();
        assert!(spec.string_data.is_empty());
        assert_eq!(spec.data["a"], "aGk=");
        assert_eq!(spec.data["b"], "cGxhaW4=");

        let mut bad = SecretSpec::default();
        bad.data.insert("token".into(), "not base64!".into());
        let e = admit_secret(&mut bad, None).unwrap_err();
        assert_eq!(e.field(), Some("spec.data.token"));
        assert!(!e.to_string().contains("not base64!"), "{e}");

        // Sent back as read: stored values are kept, new ones replace.
        let mut back = SecretSpec::default();
        back.data.insert("a".into(), REDACTED.into());
        back.data.insert("b".into(), REDACTED.into());
        back.string_data.insert("c".into(), "new".into());
        admit_secret(&mut back, Some(&spec)).unwrap();
        assert_eq!(back.data["a"], "aGk=");
        assert_eq!(back.data["b"], "cGxhaW4=");
        assert_eq!(back.data["c"], "bmV3");
        let mut unknown = SecretSpec::default();
        unknown.data.insert("zzz".into(), REDACTED.into());
        let e = admit_secret(&mut unknown, Some(&spec)).unwrap_err();
        assert_eq!(e.field(), Some("spec.data.zzz"));
    }

    #[test]
    fn package_build_status() {
        let mut p = Resource::new("p", PackageSpec::default());
        p.spec.deployment = Some(Archive::stored(&"a".repeat(64), None));
        assert_eq!(
            PackageSpec::initial_status(&p).buildstatus,
            BuildStatus::None
        );
        let mut q = p.clone();
        q.spec.source = Some(Archive::stored(&"b".repeat(64), None));
        assert_eq!(
            PackageSpec::initial_status(&q).buildstatus,
            BuildStatus::Pending
        );
        p.status.buildstatus = BuildStatus::None;
        assert_eq!(PackageSpec::status_after_update(&p, &p), None);
        let s = PackageSpec::status_after_update(&p, &q).unwrap();
        assert_eq!(s.buildstatus, BuildStatus::Pending);
    }
}
