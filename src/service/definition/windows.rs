//! Windows: the per-user Scheduled Task's XML, the description of the
//! `--headless` Windows service, and argument quoting as
//! `CommandLineToArgvW` reads it.

use super::xml_escape;
use crate::service::ServiceSpec;

impl ServiceSpec {
    /// The Task Scheduler XML of the logon task.
    pub(super) fn task_xml(&self) -> String {
        let account = xml_escape(&self.account);
        let args: Vec<String> = self.args.iter().map(|a| windows_quote(a)).collect();
        format!(
            r#"<?xml version="1.0" encoding="UTF-16"?>
<Task version="1.2" xmlns="http://schemas.microsoft.com/windows/2004/02/mit/task">
  <RegistrationInfo>
    <Description>{description}. Written by `{binary} service install`; see docs/operations.md.</Description>
    <URI>\{task}</URI>
  </RegistrationInfo>
  <Triggers>
    <LogonTrigger>
      <Repetition>
        <Interval>PT1M</Interval>
        <StopAtDurationEnd>false</StopAtDurationEnd>
      </Repetition>
      <Enabled>true</Enabled>
      <UserId>{account}</UserId>
    </LogonTrigger>
  </Triggers>
  <Principals>
    <Principal id="Author">
      <UserId>{account}</UserId>
      <LogonType>InteractiveToken</LogonType>
      <RunLevel>LeastPrivilege</RunLevel>
    </Principal>
  </Principals>
  <Settings>
    <MultipleInstancesPolicy>IgnoreNew</MultipleInstancesPolicy>
    <DisallowStartIfOnBatteries>false</DisallowStartIfOnBatteries>
    <StopIfGoingOnBatteries>false</StopIfGoingOnBatteries>
    <AllowHardTerminate>true</AllowHardTerminate>
    <StartWhenAvailable>true</StartWhenAvailable>
    <RunOnlyIfNetworkAvailable>false</RunOnlyIfNetworkAvailable>
    <IdleSettings>
      <StopOnIdleEnd>false</StopOnIdleEnd>
      <RestartOnIdle>false</RestartOnIdle>
    </IdleSettings>
    <AllowStartOnDemand>true</AllowStartOnDemand>
    <Enabled>true</Enabled>
    <Hidden>false</Hidden>
    <RunOnlyIfIdle>false</RunOnlyIfIdle>
    <WakeToRun>false</WakeToRun>
    <ExecutionTimeLimit>PT0S</ExecutionTimeLimit>
    <Priority>7</Priority>
    <RestartOnFailure>
      <Interval>PT1M</Interval>
      <Count>999</Count>
    </RestartOnFailure>
  </Settings>
  <Actions Context="Author">
    <Exec>
      <Command>{exe}</Command>
      <Arguments>{args}</Arguments>
      <WorkingDirectory>{wd}</WorkingDirectory>
    </Exec>
  </Actions>
</Task>
"#,
            description = xml_escape(self.program.description()),
            binary = self.program.binary(),
            task = xml_escape(self.program.task_name()),
            exe = xml_escape(&self.exe),
            args = xml_escape(&args.join(" ")),
            wd = xml_escape(&self.working_dir),
        )
    }

    /// What `print` says of the `--headless` Windows service, which has no
    /// definition file.
    pub(super) fn windows_service_summary(&self) -> String {
        let args: Vec<String> = self.args.iter().map(|a| windows_quote(a)).collect();
        format!(
            "Windows service {name} ({description})\n\
             \x20 binary:     {exe}\n\
             \x20 arguments:  {args}\n\
             \x20 start:      automatic, as LocalSystem, in session 0 (no desktop: OPENCLAW_TASK is unavailable)\n\
             \x20 on failure: restart after 5 s, 10 s, then every 60 s\n",
            name = self.program.windows_service_name(),
            description = self.program.description(),
            exe = self.exe,
            args = args.join(" "),
        )
    }
}

/// One argument as `CommandLineToArgvW` reads it back.
pub fn windows_quote(arg: &str) -> String {
    if !arg.is_empty() && !arg.contains([' ', '\t', '"']) {
        return arg.to_string();
    }
    let mut out = String::from("\"");
    let mut backslashes = 0;
    for c in arg.chars() {
        match c {
            '\\' => backslashes += 1,
            '"' => {
                out.push_str(&"\\".repeat(backslashes * 2 + 1));
                out.push('"');
                backslashes = 0;
            }
            _ => {
                out.push_str(&"\\".repeat(backslashes));
                out.push(c);
                backslashes = 0;
            }
        }
    }
    out.push_str(&"\\".repeat(backslashes * 2));
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(windows_quote(r"C:\a b\c.exe"), r#""C:\a b\c.exe""#);
        assert_eq!(windows_quote(r"C:\dir\"), r"C:\dir\");
        assert_eq!(windows_quote(r"C:\a b\"), r#""C:\a b\\""#);
        assert_eq!(windows_quote(r#"say "hi""#), r#""say \"hi\"""#);
        assert_eq!(windows_quote(""), r#""""#);
    }
}
