//! `kappa route create|get|list|update|delete` (aliases `httptrigger`, `ht`).

use kappa_types::{FunctionReference, FunctionReferenceType, HttpTrigger, HttpTriggerSpec, Kind};

use super::{Ctx, DeleteArgs, NameArg, usage};
use crate::code::generated_name;
use crate::output::{Table, or_dash};

/// `kappa route ...`
#[derive(Debug, Clone, clap::Subcommand)]
pub enum RouteCommand {
    /// Create a route: a path (or prefix) on the public router that invokes a function.
    Create(RouteCreate),
    /// Print a route (YAML by default).
    Get(NameArg),
    /// List routes.
    #[command(alias = "ls")]
    List,
    /// Change the flags given; the rest stays as it is.
    Update(RouteUpdate),
    /// Delete a route.
    #[command(alias = "rm")]
    Delete(DeleteArgs),
}

/// `route create`.
#[derive(Debug, Clone, clap::Args)]
pub struct RouteCreate {
    /// Write the YAML into specs/ (for `kappa spec apply`) instead of creating it.
    #[arg(long)]
    pub spec: bool,
    /// The route's name [default: <function>-<6 random hex>].
    #[arg(long)]
    pub name: Option<String>,
    /// The function it invokes; NAME@N pins version N (`kappa fn history`).
    #[arg(long)]
    pub function: String,
    #[command(flatten)]
    pub path: RoutePath,
    /// Forward the prefix to the function instead of stripping it.
    #[arg(long)]
    pub keepprefix: bool,
    /// A method that matches (repeatable) [default: GET].
    #[arg(long = "method", value_name = "METHOD")]
    pub methods: Vec<String>,
    /// Only requests for this Host match.
    #[arg(long)]
    pub host: Option<String>,
}

/// `--url` or `--prefix`.
#[derive(Debug, Clone, clap::Args)]
#[group(required = true, multiple = false)]
pub struct RoutePath {
    /// A path template, e.g. /users/{id}.
    #[arg(long)]
    pub url: Option<String>,
    /// A path prefix: every path under it matches.
    #[arg(long)]
    pub prefix: Option<String>,
}

/// `route update`.
#[derive(Debug, Clone, clap::Args)]
pub struct RouteUpdate {
    /// The route to change.
    #[arg(long)]
    pub name: String,
    /// The function it invokes; NAME@N pins version N (`kappa fn history`).
    #[arg(long)]
    pub function: Option<String>,
    /// A new path template (replaces a prefix).
    #[arg(long, conflicts_with = "prefix")]
    pub url: Option<String>,
    /// A new prefix (replaces a path template).
    #[arg(long)]
    pub prefix: Option<String>,
    /// Forward the prefix to the function instead of stripping it.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub keepprefix: Option<bool>,
    /// The methods that match (repeatable; replaces the current list).
    #[arg(long = "method", value_name = "METHOD")]
    pub methods: Vec<String>,
    /// Only requests for this Host match ("" matches any host).
    #[arg(long)]
    pub host: Option<String>,
}

/// A path as given, with a leading '/' added when missing (`--url hello` means `/hello`).
pub fn normalize_path(path: &str) -> String {
    let path = path.trim();
    if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/{path}")
    }
}

/// Methods as given, upper-cased; `GET` when none.
pub fn normalize_methods(methods: &[String]) -> Vec<String> {
    if methods.is_empty() {
        return vec!["GET".into()];
    }
    methods
        .iter()
        .map(|m| m.trim().to_ascii_uppercase())
        .collect()
}

/// The spec of a route to `function`.
pub fn route_spec(
    function: &str,
    url: Option<&str>,
    prefix: Option<&str>,
    keep_prefix: bool,
    methods: &[String],
    host: Option<&str>,
) -> HttpTriggerSpec {
    HttpTriggerSpec {
        host: host.map(str::to_string).filter(|h| !h.is_empty()),
        relativeurl: url.map(normalize_path),
        prefix: prefix.map(normalize_path),
        keep_prefix,
        methods: normalize_methods(methods),
        functionref: FunctionReference::name(function),
    }
}

/// Runs a `route` subcommand.
pub async fn run(ctx: &Ctx, command: RouteCommand) -> anyhow::Result<()> {
    match command {
        RouteCommand::Create(args) => {
            kappa_types::validate_function_ref("--function", &args.function).map_err(|_| {
                usage(format!(
                    "--function {:?} is not a function name: expected a DNS-1123 label, or NAME@N for version N",
                    args.function
                ))
            })?;
            let name = match &args.name {
                Some(name) => name.clone(),
                None => generated_name(&args.function.replace('@', "-v")),
            };
            super::check_name(&name)?;
            let spec = route_spec(
                &args.function,
                args.path.url.as_deref(),
                args.path.prefix.as_deref(),
                args.keepprefix,
                &args.methods,
                args.host.as_deref(),
            );
            let route: HttpTrigger = ctx.resource(&name, spec);
            if args.spec {
                return crate::spec::write_spec(&route);
            }
            let created = super::create(ctx, &route).await?;
            super::report(ctx, Kind::HttpTrigger, &name, "created", &created)
        }
        RouteCommand::Get(name) => super::get(ctx, &name, table).await,
        RouteCommand::List => super::list(ctx, table).await,
        RouteCommand::Update(args) => {
            super::check_name(&args.name)?;
            let updated = super::update::<HttpTriggerSpec, _>(ctx, &args.name, |route| {
                let s = &mut route.spec;
                if let Some(function) = &args.function {
                    s.functionref = FunctionReference::name(function);
                }
                if let Some(url) = &args.url {
                    s.relativeurl = Some(normalize_path(url));
                    s.prefix = None;
                }
                if let Some(prefix) = &args.prefix {
                    s.prefix = Some(normalize_path(prefix));
                    s.relativeurl = None;
                }
                if let Some(keep) = args.keepprefix {
                    s.keep_prefix = keep;
                }
                if !args.methods.is_empty() {
                    s.methods = normalize_methods(&args.methods);
                }
                if let Some(host) = &args.host {
                    s.host = Some(host.clone()).filter(|h| !h.is_empty());
                }
                Ok(())
            })
            .await?;
            super::report(ctx, Kind::HttpTrigger, &args.name, "updated", &updated)
        }
        RouteCommand::Delete(args) => super::delete(ctx, Kind::HttpTrigger, &args).await,
    }
}

/// The URL column: the path template, or the prefix followed by `*`.
pub fn url_cell(spec: &HttpTriggerSpec) -> String {
    match (&spec.prefix, &spec.relativeurl) {
        (Some(prefix), _) => format!("{prefix}*"),
        (None, Some(url)) => url.clone(),
        (None, None) => "-".into(),
    }
}

/// The FUNCTION column: a name, or `a:80,b:20` for weights.
pub fn function_cell(functionref: &FunctionReference) -> String {
    match functionref.kind {
        FunctionReferenceType::Name => functionref.name.clone(),
        FunctionReferenceType::FunctionWeights => functionref
            .functionweights
            .iter()
            .map(|(name, weight)| format!("{name}:{weight}"))
            .collect::<Vec<_>>()
            .join(","),
    }
}

/// NAME, METHODS, HOST, URL, FUNCTION.
pub fn table(items: &[HttpTrigger]) -> Table {
    let mut t = Table::new(&["NAME", "METHODS", "HOST", "URL", "FUNCTION"]);
    for route in items {
        t.row(vec![
            route.metadata.name.clone(),
            route.spec.effective_methods().join(","),
            or_dash(route.spec.host.as_ref()),
            url_cell(&route.spec),
            function_cell(&route.spec.functionref),
        ]);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_from_flags() {
        use kappa_types::Spec;
        let s = route_spec("hello", Some("hello"), None, false, &["post".into()], None);
        assert_eq!(s.relativeurl.as_deref(), Some("/hello"));
        assert_eq!(s.methods, vec!["POST".to_string()]);
        assert_eq!(s.functionref.name, "hello");
        s.validate().unwrap();
        let s = route_spec("hello", None, Some("/api/"), true, &[], Some("example.com"));
        assert_eq!(url_cell(&s), "/api/*");
        assert_eq!(s.methods, vec!["GET".to_string()]);
        s.validate().unwrap();
    }
}
