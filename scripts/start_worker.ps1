<#
.SYNOPSIS
Starts rayvault-worker on Windows, bound to this machine's Tailscale IP.

.EXAMPLE
$env:RAYVAULT_CLUSTER_SECRET = "<strong-shared-secret>"
$env:RAYVAULT_WORKER_ID = "windows-worker-1"
./scripts/start_worker.ps1 -Host 100.x.y.z -Port 8787

.DESCRIPTION
Checks that RAYVAULT_CLUSTER_SECRET (or RAYVAULT_CLUSTER_SECRET_CURRENT) is
set - the secret is never passed on the command line, where other users can
read it - then runs rayvault-worker.exe in this window. Ctrl-C stops it
gracefully: running jobs get [worker] shutdown_grace_s to finish.

The worker's own log goes to this console and is appended to
$env:RAYVAULT_STATE_DIR\worker\worker-daemon.log; each job's log is
$env:RAYVAULT_STATE_DIR\worker\jobs\<job_id>\worker.log.

OPENCLAW_TASK needs the interactive desktop session: start this script from
the logged-in user's desktop, not as a service.
#>
param(
    # The Tailscale IPv4 of this machine (tailscale ip -4), or 127.0.0.1.
    [Alias("Host")][string]$BindHost = $env:RAYVAULT_WORKER_HOST,
    [int]$Port = 0,
    # Path to rayvault-worker.exe; default: next to this script's repo, then PATH.
    [string]$Binary = "",
    [string]$StateDir = $env:RAYVAULT_STATE_DIR,
    # Extra flags passed through, e.g. --allow-plain-token during a migration.
    [Parameter(ValueFromRemainingArguments = $true)][string[]]$Rest = @()
)
$ErrorActionPreference = "Stop"

if (-not $env:RAYVAULT_CLUSTER_SECRET -and -not $env:RAYVAULT_CLUSTER_SECRET_CURRENT) {
    Write-Error ("RAYVAULT_CLUSTER_SECRET is not set. Set it to the secret shared with the controller, e.g.`n" +
        '  $env:RAYVAULT_CLUSTER_SECRET = Read-Host -AsSecureString | ConvertFrom-SecureString -AsPlainText')
    exit 2
}

$repo = Split-Path -Parent $PSScriptRoot
if (-not $Binary) {
    foreach ($candidate in @(
            (Join-Path $repo "rayvault-worker.exe"),
            (Join-Path $repo "target\release\rayvault-worker.exe"),
            (Join-Path $repo "target\x86_64-pc-windows-gnu\release\rayvault-worker.exe"),
            (Join-Path $repo "target\cross\x86_64-pc-windows-gnu\release\rayvault-worker.exe"),
            (Join-Path $repo "target\cross\x86_64-pc-windows-gnu\debug\rayvault-worker.exe"),
            (Join-Path $repo "target\debug\rayvault-worker.exe"))) {
        if (Test-Path $candidate) { $Binary = $candidate; break }
    }
}
if (-not $Binary) {
    $found = Get-Command rayvault-worker.exe -ErrorAction SilentlyContinue
    if ($found) { $Binary = $found.Source }
}
if (-not $Binary -or -not (Test-Path $Binary)) {
    Write-Error "rayvault-worker.exe not found; build it (cargo build --release --bin rayvault-worker) or pass -Binary <path>"
    exit 2
}

if (-not $StateDir) { $StateDir = Join-Path $repo "state" }
$env:RAYVAULT_STATE_DIR = $StateDir
$workerDir = Join-Path $StateDir "worker"
New-Item -ItemType Directory -Force -Path $workerDir | Out-Null
$log = Join-Path $workerDir "worker-daemon.log"

$workerArgs = @()
if ($BindHost) { $workerArgs += @("--host", $BindHost) }
if ($Port -gt 0) { $workerArgs += @("--port", "$Port") }
$workerArgs += $Rest

Write-Host "start_worker: starting $Binary $($workerArgs -join ' ')"
Write-Host "start_worker: state in $workerDir; daemon log in $log; per-job logs in $workerDir\jobs\<job_id>\worker.log"
if ($BindHost -and -not ($BindHost.StartsWith("100.") -or $BindHost -eq "127.0.0.1")) {
    Write-Warning "$BindHost is not a Tailscale (100.x) or loopback address; the worker will refuse it unless --allow-any-bind is given."
}

# 2>&1 merges the worker's log (stderr) into the pipeline so Tee-Object can
# both show and save it; the exit code is passed on.
& $Binary @workerArgs 2>&1 | ForEach-Object { "$_" } | Tee-Object -FilePath $log -Append
exit $LASTEXITCODE
