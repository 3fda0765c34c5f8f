//! vmprobe's QEMU TCG plugin.
//!
//! [`tcg`] is the safe layer over QEMU's plugin API (version 4, QEMU 9.2 to
//! 10.x); the probe logic sits on it. A plugin is a `cdylib` that exports
//! `qemu_plugin_version` and `qemu_plugin_install`: [`export_plugin!`]
//! defines both around an install function.
//!
//! With the default feature `probe`, this crate's cdylib is the plugin
//! vmprobe loads: [`probe`] runs the programs vmprobe sends over the
//! plugin's socket (`-plugin libvmprobe_qemu_plugin.so,sock=PATH`). The
//! `examples/` (each a plugin with its own entry point) build with
//! `--no-default-features`, without that `qemu_plugin_install`.

#[cfg(feature = "probe")]
pub mod probe;
pub mod tcg;

#[cfg(feature = "probe")]
export_plugin!(probe::install);

/// Defines the two symbols QEMU looks up in a plugin: `qemu_plugin_version`
/// (the API version it was built for) and `qemu_plugin_install`, which
/// parses the `-plugin path,name=value,...` arguments and calls `$install`
/// (a `fn(qemu_plugin_id_t, &qemu_info_t, &[String]) -> Result<(),
/// String>`) with a panic caught. An `Err` is printed and QEMU unloads the
/// plugin (and, for a `-plugin` on the command line, exits).
#[macro_export]
macro_rules! export_plugin {
    ($install:path) => {
        #[unsafe(no_mangle)]
        pub static qemu_plugin_version: ::std::ffi::c_int = $crate::tcg::PLUGIN_API_VERSION;

        /// Called by QEMU once, on its main thread, before any vCPU exists.
        ///
        /// # Safety
        /// QEMU's contract: `info` is valid during the call; `argv` is NULL
        /// or holds `argc` NUL-terminated strings.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn qemu_plugin_install(
            id: $crate::tcg::qemu_plugin_id_t,
            info: *const $crate::tcg::qemu_info_t,
            argc: ::std::ffi::c_int,
            argv: *const *const ::std::ffi::c_char,
        ) -> ::std::ffi::c_int {
            // SAFETY: QEMU passes `argc` strings in `argv` (or NULL when
            // there are none), and its qemu_info_t, valid during this call.
            unsafe {
                let args = $crate::tcg::plugin_args(argc, argv);
                $crate::tcg::install_entry(id, info, &args, $install)
            }
        }
    };
}
