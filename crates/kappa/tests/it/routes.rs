//! `kappa route` (aliases `httptrigger`, `ht`).

use crate::support::Platform;

fn with_function(p: &Platform) {
    p.python_env();
    let code = p.file("hello.py", "def main():\n    return 'hi'\n");
    p.ok(&[
        "fn",
        "create",
        "--name",
        "hello",
        "--env",
        "python",
        "--code",
        code.to_str().unwrap(),
    ]);
}

#[test]
fn route_create_get_list_update_delete() {
    let p = Platform::start();
    with_function(&p);
    let run = p.ok(&[
        "route",
        "create",
        "--name",
        "hello-route",
        "--function",
        "hello",
        "--url",
        "/hello/{name}",
        "--method",
        "GET",
        "--method",
        "post",
    ]);
    assert_eq!(run.stdout, "route 'hello-route' created\n");
    p.ok(&[
        "ht",
        "create",
        "--name",
        "api",
        "--function",
        "hello",
        "--prefix",
        "/api/",
        "--host",
        "example.com",
    ]);

    assert_eq!(
        p.ok(&["route", "list"]).stdout,
        "NAME         METHODS   HOST         URL            FUNCTION\n\
         api          GET       example.com  /api/*         hello\n\
         hello-route  GET,POST  -            /hello/{name}  hello\n"
    );
    let route = p.json(&["httptrigger", "get", "hello-route"]);
    assert_eq!(route["spec"]["relativeurl"], "/hello/{name}");
    assert_eq!(route["spec"]["methods"], serde_json::json!(["GET", "POST"]));

    // A prefix replaces the path template; the rest stays.
    let run = p.ok(&[
        "route",
        "update",
        "--name",
        "hello-route",
        "--prefix",
        "/h",
        "--keepprefix",
    ]);
    assert_eq!(run.stdout, "route 'hello-route' updated\n");
    let route = p.json(&["route", "get", "hello-route"]);
    assert_eq!(route["spec"]["prefix"], "/h");
    assert!(route["spec"].get("relativeurl").is_none(), "{route}");
    assert_eq!(route["spec"]["keepPrefix"], true);
    assert_eq!(route["spec"]["methods"], serde_json::json!(["GET", "POST"]));

    p.ok(&[
        "route", "update", "--name", "api", "--host", "", "--method", "DELETE",
    ]);
    let route = p.json(&["route", "get", "api"]);
    assert!(route["spec"].get("host").is_none(), "{route}");
    assert_eq!(route["spec"]["methods"], serde_json::json!(["DELETE"]));

    assert_eq!(
        p.ok(&["route", "delete", "hello-route"]).stdout,
        "route 'hello-route' deleted\n"
    );
    assert_eq!(p.json(&["route", "list"]).as_array().unwrap().len(), 1);
}

#[test]
fn default_name_and_method() {
    let p = Platform::start();
    with_function(&p);
    let run = p.ok(&["route", "create", "--function", "hello", "--url", "hello"]);
    let name = run
        .stdout
        .strip_prefix("route '")
        .and_then(|s| s.strip_suffix("' created\n"))
        .unwrap()
        .to_string();
    let suffix = name.strip_prefix("hello-").unwrap();
    assert_eq!(suffix.len(), 6);
    let route = p.json(&["route", "get", &name]);
    assert_eq!(route["spec"]["relativeurl"], "/hello");
    assert_eq!(route["spec"]["methods"], serde_json::json!(["GET"]));
}

#[test]
fn route_errors_name_the_field() {
    let p = Platform::start();
    with_function(&p);
    p.ok(&[
        "route",
        "create",
        "--name",
        "one",
        "--function",
        "hello",
        "--url",
        "/hello",
    ]);
    // The same route twice: the API refuses and names the field.
    let run = p.kappa(&[
        "route",
        "create",
        "--name",
        "two",
        "--function",
        "hello",
        "--url",
        "/hello",
    ]);
    run.code(1);
    assert!(
        run.stderr.starts_with("error: creating route 'two': "),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.ends_with("  field: spec.relativeurl\n"),
        "{}",
        run.stderr
    );
    // An unknown function.
    let run = p.kappa(&[
        "route",
        "create",
        "--name",
        "three",
        "--function",
        "ghost",
        "--url",
        "/ghost",
    ]);
    run.code(1);
    assert!(
        run.stderr.ends_with("  field: spec.functionref.name\n"),
        "{}",
        run.stderr
    );
    // Checked before sending: a bad template and a bad method.
    let run = p.kappa(&[
        "route",
        "create",
        "--function",
        "hello",
        "--url",
        "/users/{id",
    ]);
    run.code(1);
    assert!(
        run.stderr.ends_with("  field: spec.relativeurl\n"),
        "{}",
        run.stderr
    );
    let run = p.kappa(&[
        "route",
        "create",
        "--function",
        "hello",
        "--url",
        "/x",
        "--method",
        "FETCH",
    ]);
    run.code(1);
    assert!(
        run.stderr.ends_with("  field: spec.methods[0]\n"),
        "{}",
        run.stderr
    );
    // Neither --url nor --prefix.
    p.kappa(&["route", "create", "--function", "hello"]).code(2);
    assert_eq!(p.json(&["route", "list"]).as_array().unwrap().len(), 1);
}
