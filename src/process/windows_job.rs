//! The Windows Job Object that holds a child and all its descendants, so that
//! a timeout or a cancellation kills the whole tree, and so that the kernel
//! kills it when the process that started it dies (kill-on-close).

use windows_sys::Win32::Foundation::{CloseHandle, HANDLE};
use windows_sys::Win32::System::JobObjects::{
    AssignProcessToJobObject, CreateJobObjectW, JobObjectExtendedLimitInformation,
    SetInformationJobObject, TerminateJobObject, JOBOBJECT_EXTENDED_LIMIT_INFORMATION,
    JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE,
};

/// A Job Object holding one child and all its descendants. Closing it
/// (on drop) kills them all, so even a panicking executor leaves no
/// orphaned tool behind.
pub(super) struct JobHandle(HANDLE);

// SAFETY: a job object handle may be used from any thread.
unsafe impl Send for JobHandle {}
unsafe impl Sync for JobHandle {}

impl JobHandle {
    pub(super) fn assign(process: std::os::windows::io::RawHandle) -> Option<Self> {
        // SAFETY: plain Win32 calls on handles we own; failures are
        // checked and the job handle is closed on every error path.
        unsafe {
            let job = CreateJobObjectW(std::ptr::null(), std::ptr::null());
            if job.is_null() {
                return None;
            }
            let mut info: JOBOBJECT_EXTENDED_LIMIT_INFORMATION = std::mem::zeroed();
            info.BasicLimitInformation.LimitFlags = JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE;
            let ok = SetInformationJobObject(
                job,
                JobObjectExtendedLimitInformation,
                &info as *const _ as *const _,
                std::mem::size_of::<JOBOBJECT_EXTENDED_LIMIT_INFORMATION>() as u32,
            );
            if ok == 0 || AssignProcessToJobObject(job, process as HANDLE) == 0 {
                CloseHandle(job);
                return None;
            }
            Some(JobHandle(job))
        }
    }

    pub(super) fn terminate(&self) {
        // SAFETY: the handle is valid until drop.
        unsafe {
            TerminateJobObject(self.0, 1);
        }
    }
}

impl Drop for JobHandle {
    fn drop(&mut self) {
        // SAFETY: closing our own handle once.
        unsafe {
            CloseHandle(self.0);
        }
    }
}
