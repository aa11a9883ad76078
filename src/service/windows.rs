//! `--headless` on Windows: the worker as a real Windows service, created
//! with the `windows-service` crate, and the access list of its
//! environment file.
//!
//! The service runs as LocalSystem in session 0, which has no desktop, so
//! `OPENCLAW_TASK` is unavailable there (see `crate::caps`). It cannot read
//! the installing user's DPAPI-protected file either, so its environment
//! file is plain text that only SYSTEM and the Administrators group may
//! read (a protected DACL: nothing inherited from the folder).

use super::{ServiceError, ServiceSpec};
use std::ffi::OsString;
use std::io::Write;
use std::path::Path;
use std::time::Duration;
use windows_service::service::{
    ServiceAccess, ServiceAction, ServiceActionType, ServiceErrorControl, ServiceFailureActions,
    ServiceFailureResetPeriod, ServiceInfo, ServiceStartType, ServiceState, ServiceType,
};
use windows_service::service_manager::{ServiceManager, ServiceManagerAccess};

fn svc_err(what: &str, e: windows_service::Error) -> ServiceError {
    ServiceError(format!("{what}: {} (installing a Windows service needs an Administrator prompt)", describe(&e)))
}

/// The crate's error with the system's reason ("Access is denied. (os error 5)").
fn describe(e: &windows_service::Error) -> String {
    match std::error::Error::source(e) {
        Some(cause) => format!("{e}: {cause}"),
        None => e.to_string(),
    }
}

/// Replaces the file's access list with "SYSTEM and Administrators: full
/// control", nothing inherited.
pub fn restrict_to_system_and_admins(path: &Path) -> std::io::Result<()> {
    use std::os::windows::ffi::OsStrExt;
    use windows_sys::Win32::Foundation::LocalFree;
    use windows_sys::Win32::Security::Authorization::{
        ConvertStringSecurityDescriptorToSecurityDescriptorW, SDDL_REVISION_1,
    };
    use windows_sys::Win32::Security::{SetFileSecurityW, DACL_SECURITY_INFORMATION, PROTECTED_DACL_SECURITY_INFORMATION};
    let sddl: Vec<u16> = "D:P(A;;FA;;;SY)(A;;FA;;;BA)\0".encode_utf16().collect();
    let wide: Vec<u16> = path.as_os_str().encode_wide().chain(std::iter::once(0)).collect();
    let mut sd = std::ptr::null_mut();
    // SAFETY: both strings are NUL-terminated; the descriptor is allocated
    // by the API and freed with LocalFree.
    unsafe {
        if ConvertStringSecurityDescriptorToSecurityDescriptorW(sddl.as_ptr(), SDDL_REVISION_1, &mut sd, std::ptr::null_mut()) == 0 {
            return Err(std::io::Error::last_os_error());
        }
        let ok = SetFileSecurityW(wide.as_ptr(), DACL_SECURITY_INFORMATION | PROTECTED_DACL_SECURITY_INFORMATION, sd);
        let result = if ok == 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) };
        LocalFree(sd as _);
        result
    }
}

fn service_info(spec: &ServiceSpec) -> ServiceInfo {
    ServiceInfo {
        name: spec.program.windows_service_name().into(),
        display_name: OsString::from(spec.program.description()),
        service_type: ServiceType::OWN_PROCESS,
        start_type: ServiceStartType::AutoStart,
        error_control: ServiceErrorControl::Normal,
        executable_path: spec.exe.clone().into(),
        launch_arguments: spec.args.iter().map(OsString::from).collect(),
        dependencies: vec![],
        account_name: None,
        account_password: None,
    }
}

/// Creates (or updates) the service, sets its restart-on-failure actions
/// and starts it.
pub fn install_service(spec: &ServiceSpec, out: &mut dyn Write) -> Result<(), ServiceError> {
    let manager = ServiceManager::local_computer(None::<&str>, ServiceManagerAccess::CONNECT | ServiceManagerAccess::CREATE_SERVICE)
        .map_err(|e| svc_err("cannot open the service manager", e))?;
    let access = ServiceAccess::QUERY_STATUS | ServiceAccess::START | ServiceAccess::STOP | ServiceAccess::CHANGE_CONFIG;
    let info = service_info(spec);
    let service = match manager.open_service(spec.program.windows_service_name(), access) {
        Ok(existing) => {
            existing.change_config(&info).map_err(|e| svc_err("cannot update the service", e))?;
            existing
        }
        Err(_) => manager.create_service(&info, access).map_err(|e| svc_err("cannot create the service", e))?,
    };
    let restart = |secs| ServiceAction { action_type: ServiceActionType::Restart, delay: Duration::from_secs(secs) };
    let actions = ServiceFailureActions {
        reset_period: ServiceFailureResetPeriod::After(Duration::from_secs(24 * 3600)),
        reboot_msg: None,
        command: None,
        actions: Some(vec![restart(5), restart(10), restart(60)]),
    };
    // A non-zero exit (not only a crash) counts as a failure to restart on.
    let restarts = service
        .update_failure_actions(actions)
        .and_then(|()| service.set_failure_actions_on_non_crash_failures(true));
    if let Err(e) = restarts {
        // The service still works; it only will not come back by itself.
        let _ = writeln!(
            out,
            "warning: the restart-on-failure actions could not be set ({}); set them in services.msc, Recovery tab",
            describe(&e)
        );
    }
    let _ = writeln!(out, "installed the Windows service {}", spec.program.windows_service_name());
    let running = service.query_status().is_ok_and(|s| s.current_state == ServiceState::Running);
    if running {
        let _ = service.stop();
        wait_for(&service, ServiceState::Stopped);
    }
    match service.start::<&str>(&[]) {
        Ok(()) => {}
        // The manager may already have started it (ERROR_SERVICE_ALREADY_RUNNING).
        Err(windows_service::Error::Winapi(e)) if e.raw_os_error() == Some(1056) => {}
        Err(e) => return Err(svc_err("cannot start the service", e)),
    }
    let _ = writeln!(out, "started {}", spec.program.windows_service_name());
    Ok(())
}

fn wait_for(service: &windows_service::service::Service, state: ServiceState) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while std::time::Instant::now() < deadline {
        if service.query_status().is_ok_and(|s| s.current_state == state) {
            return;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Stops and deletes the service.
pub fn uninstall_service(spec: &ServiceSpec, out: &mut dyn Write) -> Result<(), ServiceError> {
    let manager = ServiceManager::local_computer(None::<&str>, ServiceManagerAccess::CONNECT)
        .map_err(|e| svc_err("cannot open the service manager", e))?;
    let access = ServiceAccess::QUERY_STATUS | ServiceAccess::STOP | ServiceAccess::DELETE;
    match manager.open_service(spec.program.windows_service_name(), access) {
        Ok(service) => {
            let _ = service.stop();
            wait_for(&service, ServiceState::Stopped);
            service.delete().map_err(|e| svc_err("cannot delete the service", e))?;
            let _ = writeln!(out, "removed the Windows service {}", spec.program.windows_service_name());
        }
        Err(e) => {
            let _ = writeln!(out, "the Windows service {} was not found ({})", spec.program.windows_service_name(), describe(&e));
        }
    }
    Ok(())
}

/// Prints the service's state; true when it exists.
pub fn service_status(spec: &ServiceSpec, out: &mut dyn Write) -> bool {
    let status = ServiceManager::local_computer(None::<&str>, ServiceManagerAccess::CONNECT)
        .and_then(|m| m.open_service(spec.program.windows_service_name(), ServiceAccess::QUERY_STATUS))
        .and_then(|s| s.query_status());
    match status {
        Ok(s) => {
            let _ = writeln!(out, "Windows service {}: {:?}", spec.program.windows_service_name(), s.current_state);
            true
        }
        Err(e) => {
            let _ = writeln!(out, "Windows service {}: not installed ({})", spec.program.windows_service_name(), describe(&e));
            false
        }
    }
}
