//! Kappa's resource model: Environment, Package, Function and HttpTrigger, in the shape the
//! Kubernetes CRDs have (`apiVersion: kappa.dev/v1`, `kind`, `metadata`, `spec`, `status`),
//! with defaults and validation that names the offending field, and the time trigger
//! [`Schedule`] (parsed where triggers are admitted, listed and fired).
//!
//! This crate owns the *meaning* of a resource. It deliberately does no IO and knows nothing of
//! HTTP servers, tokio, storage or Kubernetes: the store, the API server and the CRD wrappers
//! convert to and from these types at their edges.

mod canary;
mod config;
mod environment;
mod error;
mod events;
mod function;
mod invocation;
mod kind;
mod meta;
mod package;
mod quantity;
mod schedule;
mod trigger;
pub mod validate;
mod version;

pub use canary::{
    CanaryConfigSpec, CanaryConfigStatus, CanaryInterval, CanaryPhase, CanaryStep, next_step,
};
pub use config::{CONFIG_DATA_LIMIT, ConfigMapSpec, SecretSpec, validate_config_key};
pub use environment::{
    Builder, DEFAULT_POOL_MAX, EnvironmentSpec, PoolMode, PoolPolicy, ResourceList, Resources,
    Runtime, Toleration,
};
pub use error::{ErrorBody, ErrorDetail};
pub use events::{
    MESSAGE_QUEUE_TYPES, MessageQueueTriggerSpec, TimeTriggerSpec, TriggerStatus,
    unsupported_message_queue_type, validate_cron_shape,
};
pub use function::{
    ExecutorType, FunctionPackageRef, FunctionSpec, FunctionStatus, NamedRef, PackageRef,
};
pub use invocation::{
    ASYNC_BODY_LIMIT, ASYNC_ID_HEADER, AttemptRecord, DeadLetter, FUNCTION_LABEL,
    INVOCATION_TYPE_HEADER, InvocationHeader, InvocationLease, InvocationPhase, InvocationResponse,
    InvocationSpec, InvocationStatus, is_invocation_id,
};
pub use kind::Kind;
pub use meta::{API_VERSION, DEFAULT_NAMESPACE, ObjectMeta, Resource, Spec};
pub use package::{
    ARCHIVE_STORE_PREFIX, Archive, ArchiveType, BuildStatus, Checksum, LITERAL_SIZE_LIMIT,
    PackageSpec, PackageStatus, is_sha256_hex,
};
pub use quantity::{parse_cpu_millis, parse_memory_bytes};
pub use schedule::{Schedule, ScheduleError, parse_duration};
pub use trigger::{FunctionReference, FunctionReferenceType, HttpTriggerSpec};
pub use validate::ValidationError;
pub use version::{
    DEFAULT_VERSION_LIMIT, FunctionVersionSpec, VERSION_ANNOTATION, VERSION_FUNCTION_LABEL,
    function_ref_target, parse_version_object_name, parse_version_ref, validate_function_ref,
    version_object_name, versions_to_collect,
};

/// An Environment: a runtime (and optionally a builder) functions run in.
pub type Environment = Resource<EnvironmentSpec>;
/// A Package: the code of one or more functions, as source and/or deployment archives.
pub type Package = Resource<PackageSpec>;
/// A Function: an entrypoint in a package, run in an environment, with its scaling settings.
pub type Function = Resource<FunctionSpec>;
/// An HttpTrigger: a route on the public router that invokes a function.
pub type HttpTrigger = Resource<HttpTriggerSpec>;
/// A MessageQueueTrigger: a broker topic whose messages invoke a function.
pub type MessageQueueTrigger = Resource<MessageQueueTriggerSpec>;
/// A TimeTrigger: a cron schedule that invokes a function.
pub type TimeTrigger = Resource<TimeTriggerSpec>;
/// A Secret: key/values placed for the instances of functions that reference it.
pub type Secret = Resource<SecretSpec>;
/// A ConfigMap: key/values placed for the instances of functions that reference it.
pub type ConfigMap = Resource<ConfigMapSpec>;
/// A FunctionVersion: an immutable numbered snapshot of a function (written by the platform).
pub type FunctionVersion = Resource<FunctionVersionSpec>;
/// A CanaryConfig: a gradual, automatically rolled back shift of a route's traffic.
pub type CanaryConfig = Resource<CanaryConfigSpec>;
/// An Invocation: an accepted asynchronous invocation of a function and its outcome.
pub type Invocation = Resource<InvocationSpec>;
