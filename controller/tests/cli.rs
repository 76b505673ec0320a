//! The shipped binaries' command lines. Living here, these tests also make `cargo test
//! --workspace` build `controller` and `meshctl`, which the end-to-end suites in tests/ start.

use std::process::Command;

fn run(bin: &str, args: &[&str]) -> (Option<i32>, String) {
    let out =
        Command::new(bin).args(args).env_remove("MESHGATE_TOKEN").env_remove("MESHGATE_TOKEN_FILE").output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code(), text)
}

fn example(name: &str) -> String {
    format!("{}/../examples/{name}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn meshctl_analyze_passes_the_shipped_example() {
    let (code, out) = run(env!("CARGO_BIN_EXE_meshctl"), &["analyze", &example("demoapp")]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("No validation issues"), "{out}");
}

#[test]
fn meshctl_analyze_names_file_resource_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("vs.yaml");
    std::fs::write(
        &file,
        "apiVersion: networking.istio.io/v1beta1\nkind: VirtualService\nmetadata: {name: web, namespace: shop}\n\
         spec:\n  hosts: [\"a.example.com\"]\n  http:\n  - route: [{destination: {host: \"\", port: {number: 80}}}]\n",
    )
    .unwrap();
    let (code, out) = run(env!("CARGO_BIN_EXE_meshctl"), &["analyze", dir.path().to_str().unwrap()]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains(&file.display().to_string()), "{out}");
    assert!(out.contains("VirtualService shop/web"), "{out}");
    assert!(out.contains("spec.http[0].route[0].destination.host"), "{out}");
}

#[test]
fn controller_refuses_to_serve_without_a_token() {
    let (code, out) =
        run(env!("CARGO_BIN_EXE_controller"), &["--config", &example("demoapp"), "--listen", "127.0.0.1:0"]);
    assert_ne!(code, Some(0), "{out}");
    assert!(out.contains("a token is required"), "{out}");
}
