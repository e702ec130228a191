//! Generates bindings to the httpd/APR headers that `apxs` reports and compiles
//! the C shim with exactly the same include paths and defines.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn apxs_query(apxs: &str, var: &str) -> String {
    let out = Command::new(apxs)
        .args(["-q", var])
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run `{apxs} -q {var}` ({e}); install apache2-dev (make deps)")
        });
    assert!(out.status.success(), "`{apxs} -q {var}` failed");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn main() {
    let apxs = env::var("APXS").unwrap_or_else(|_| "apxs".to_string());
    println!("cargo:rerun-if-env-changed=APXS");
    for f in [
        "c_shim/wrapper.h",
        "c_shim/shim.c",
        "c_shim/mod_rsession.h",
        "c_shim/shim_buckets.h",
    ] {
        println!("cargo:rerun-if-changed={f}");
    }

    let include_dirs: Vec<String> = ["INCLUDEDIR", "APR_INCLUDEDIR", "APU_INCLUDEDIR"]
        .iter()
        .map(|v| apxs_query(&apxs, v))
        .filter(|d| !d.is_empty())
        .collect();
    let defines: Vec<String> = apxs_query(&apxs, "EXTRA_CPPFLAGS")
        .split_whitespace()
        .filter(|f| f.starts_with("-D"))
        .map(str::to_string)
        .collect();

    let mut clang_args: Vec<String> = include_dirs.iter().map(|d| format!("-I{d}")).collect();
    clang_args.extend(defines.iter().cloned());
    clang_args.push("-Ic_shim".to_string());

    let bindings = bindgen::Builder::default()
        .header("c_shim/wrapper.h")
        .clang_args(&clang_args)
        // APR's Doxygen comments would become failing doctests.
        .generate_comments(false)
        .layout_tests(false)
        .derive_default(true)
        // Only what the FFI layer calls: a small, reviewable surface.
        .allowlist_function(
            "ap_log_rerror_|ap_log_error_|ap_get_request_module_loglevel|ap_get_server_module_loglevel\
             |apr_pool_cleanup_register|apr_pool_cleanup_null|apr_palloc|apr_pstrmemdup|apr_pool_userdata_get|apr_pool_userdata_setn|apr_pool_userdata_set\
             |apr_table_elts|apr_table_get|apr_table_set|apr_table_setn|apr_table_add|apr_table_addn|apr_table_unset\
             |ap_run_http_scheme|ap_add_output_filter_handle|ap_remove_output_filter|ap_pass_brigade|ap_set_content_type|ap_rwrite\
             |ap_runtime_dir_relative|ap_state_query|ap_auth_type|ap_set_config_vectors\
             |ap_satisfies|ap_run_access_checker|ap_run_access_checker_ex|ap_run_force_authn|ap_run_check_user_id|ap_run_auth_checker\
             |ap_get_brigade|apr_brigade_create|apr_brigade_flatten|apr_brigade_write\
             |ap_add_input_filter_handle|ap_remove_input_filter|ap_map_http_request_error|ap_discard_request_body\
             |rsession_bucket_[a-z_]+|rsession_brigade_append|apr_brigade_cleanup|apr_bucket_heap_create|apr_bucket_eos_create|ap_bucket_error_create\
             |apr_os_file_get",
        )
        .allowlist_type("ap_input_mode_t|apr_read_type_e|rsession_bucket_kind_e|request_rec|server_rec|conn_rec|cmd_parms|command_rec|module|ap_filter_t|apr_bucket_brigade|apr_table_t|apr_pool_t|apr_status_t|unixd_config_rec|ap_conf_vector_t|apr_array_header_t|apr_table_entry_t")
        .allowlist_var("ap_unixd_config|rsession_cmds|rsession_out_filter_handle|rsession_interim_filter_handle|rsession_body_filter_handle|HTTP_OK|HTTP_SERVICE_UNAVAILABLE|HTTP_MOVED_TEMPORARILY|HTTP_UNAUTHORIZED|HTTP_FORBIDDEN|AP_FILTER_ERROR|MODULE_MAGIC_NUMBER_MAJOR|MODULE_MAGIC_NUMBER_MINOR|MODULE_MAGIC_COOKIE|OK|DECLINED|HTTP_INTERNAL_SERVER_ERROR|SATISFY_ANY|APR_SUCCESS|APR_EGENERAL|APR_ENOENT|APR_EINVAL|APLOG_[A-Z0-9]+|AP_SQ_MAIN_STATE|AP_SQ_MS_CREATE_PRE_CONFIG")
        .generate()
        .expect("bindgen failed on c_shim/wrapper.h");
    let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR set by cargo"));
    bindings
        .write_to_file(out.join("bindings.rs"))
        .expect("cannot write bindings.rs");

    let mut build = cc::Build::new();
    build
        .file("c_shim/shim.c")
        .include("c_shim")
        .warnings(true)
        .warnings_into_errors(true);
    for d in &include_dirs {
        build.include(d);
    }
    for d in &defines {
        let d = d.trim_start_matches("-D");
        match d.split_once('=') {
            Some((k, v)) => build.define(k, v),
            None => build.define(d, None),
        };
    }
    build.compile("rsession_shim");
}
