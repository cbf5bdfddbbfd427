<#
.SYNOPSIS
  Enrolls this Windows host in a cis490 fleet: installs cis490-agent.exe, writes the worker
  token to %ProgramData%\cis490\worker.token (readable only by Administrators and SYSTEM)
  and %ProgramData%\cis490\agent.toml (which names it), runs the self-tests (capability,
  then check-server: the server answers and accepts the token for this name), and registers
  a scheduled task that starts the agent at boot and restarts it on failure. Stops with the
  reason when a self-test fails.

  The token (per-worker from `cis490-reconciler tokens issue NAME`, or the shared one)
  comes from -TokenFile FILE, else from $env:CIS490_WORKER_TOKEN, else (visible in the
  process list and history; avoid) -Token. Without any, an existing worker.token is kept.

  For a TLS server, -CaFile is the lab CA (ca.pem from `cis490-reconciler certs init`); for
  mTLS, -CertFile and -KeyFile are this agent's client certificate and key (`certs
  issue-agent NAME`). They are copied to %ProgramData%\cis490 (the key readable only by
  Administrators and SYSTEM) and named in agent.toml.

.EXAMPLE
  # From an elevated PowerShell in the checkout:
  .\manifests\install-agent.ps1 -Server http://pi.local:8787 -WorkDir C:\cis490\training `
      -TokenFile .\lab-3.token -Name lab-3 -MaxConcurrent 1
#>
[CmdletBinding()]
param(
    [Parameter(Mandatory = $true)] [string] $Server,
    [Parameter(Mandatory = $true)] [string] $WorkDir,
    [string] $TokenFile = "",
    [string] $Token = "",
    [string] $Name = "",
    [int] $MaxConcurrent = 1,
    [string] $Advertise = "",
    [string] $Binary = "",
    [string] $CaFile = "",
    [string] $CertFile = "",
    [string] $KeyFile = "",
    [string] $TaskName = "cis490-agent"
)
$ErrorActionPreference = "Stop"

$principal = New-Object Security.Principal.WindowsPrincipal([Security.Principal.WindowsIdentity]::GetCurrent())
if (-not $principal.IsInRole([Security.Principal.WindowsBuiltInRole]::Administrator)) {
    throw "run from an elevated PowerShell (it registers a scheduled task)"
}
if (-not (Test-Path -PathType Container $WorkDir)) { throw "work dir $WorkDir does not exist" }
if ($MaxConcurrent -lt 1) { throw "-MaxConcurrent must be at least 1" }
if ($TokenFile -ne "") {
    if ($Token -ne "") { throw "give -TokenFile or -Token, not both" }
    if (-not (Test-Path -PathType Leaf $TokenFile)) { throw "cannot read the token file $TokenFile" }
    $Token = (Get-Content -Raw -Path $TokenFile).Trim()
    if ($Token -eq "") { throw "the token file $TokenFile is empty" }
} elseif ($Token -ne "") {
    Write-Warning "-Token puts the secret on the command line; prefer -TokenFile FILE or `$env:CIS490_WORKER_TOKEN"
} elseif ($env:CIS490_WORKER_TOKEN) {
    $Token = $env:CIS490_WORKER_TOKEN.Trim()
}

if ($CaFile -ne "" -and -not (Test-Path -PathType Leaf $CaFile)) { throw "cannot read the CA file $CaFile" }
if (($CertFile -ne "") -ne ($KeyFile -ne "")) { throw "give -CertFile and -KeyFile together" }
if ($CertFile -ne "" -and -not (Test-Path -PathType Leaf $CertFile)) { throw "cannot read the certificate file $CertFile" }
if ($KeyFile -ne "" -and -not (Test-Path -PathType Leaf $KeyFile)) { throw "cannot read the key file $KeyFile" }

if ($Binary -eq "") {
    $Binary = Join-Path $PSScriptRoot "..\target\release\cis490-agent.exe"
}
if (-not (Test-Path $Binary)) {
    throw "no cis490-agent.exe at ${Binary}: build it (cargo build --release -p cis490-agent) or pass -Binary"
}

$installDir = Join-Path $env:ProgramFiles "cis490"
$configDir = Join-Path $env:ProgramData "cis490"
$stateDir = Join-Path $configDir "agent-state"
New-Item -ItemType Directory -Force -Path $installDir, $configDir, $stateDir | Out-Null
$exe = Join-Path $installDir "cis490-agent.exe"
Copy-Item -Force $Binary $exe
Write-Host "installed $exe"

# The token lives in a file of its own that only Administrators and SYSTEM (the task's
# account) can read: created empty, locked down, then written, so it is never readable by
# others even for a moment. The config and the task's command line only name it.
$tokenPath = Join-Path $configDir "worker.token"
if ($Token -ne "") {
    New-Item -ItemType File -Force -Path $tokenPath | Out-Null
    icacls $tokenPath /inheritance:r /grant:r "Administrators:F" "SYSTEM:F" | Out-Null
    if ($LASTEXITCODE -ne 0) { throw "could not restrict $tokenPath to Administrators and SYSTEM" }
    Set-Content -Path $tokenPath -Value $Token -Encoding ASCII -NoNewline
    Write-Host "wrote $tokenPath (Administrators and SYSTEM only)"
} elseif (Test-Path $tokenPath) {
    Write-Host "keeping the existing $tokenPath"
} else {
    Write-Host "no worker token given (-TokenFile FILE): the agent sends none"
}

# TLS files: the CA and certificate are public; the key is locked down like the token.
$caPath = Join-Path $configDir "ca.pem"
$certPath = Join-Path $configDir "agent.pem"
$keyPath = Join-Path $configDir "agent-key.pem"
if ($CaFile -ne "") { Copy-Item -Force $CaFile $caPath; Write-Host "wrote $caPath" }
if ($CertFile -ne "") {
    Copy-Item -Force $CertFile $certPath
    New-Item -ItemType File -Force -Path $keyPath | Out-Null
    icacls $keyPath /inheritance:r /grant:r "Administrators:F" "SYSTEM:F" | Out-Null
    if ($LASTEXITCODE -ne 0) { throw "could not restrict $keyPath to Administrators and SYSTEM" }
    Set-Content -Path $keyPath -Value (Get-Content -Raw -Path $KeyFile) -Encoding ASCII -NoNewline
    Write-Host "wrote $certPath and $keyPath (Administrators and SYSTEM only)"
}

function TomlString([string] $s) { '"' + ($s -replace '\\', '\\' -replace '"', '\"') + '"' }
$lines = @(
    "# Written by install-agent.ps1 on $((Get-Date).ToUniversalTime().ToString('s'))Z; see etc/agent.toml.example.",
    "server = $(TomlString $Server)",
    "work_dir = $(TomlString $WorkDir)",
    "state_dir = $(TomlString $stateDir)",
    "python = ""python""",
    "max_concurrent = $MaxConcurrent"
)
if (Test-Path $tokenPath) { $lines += "worker_token_file = $(TomlString $tokenPath)" }
if (Test-Path $caPath) { $lines += "ca_file = $(TomlString $caPath)" }
if ((Test-Path $certPath) -and (Test-Path $keyPath)) {
    $lines += "cert_file = $(TomlString $certPath)"
    $lines += "key_file = $(TomlString $keyPath)"
}
if ($Name -ne "") { $lines += "name = $(TomlString $Name)" }
$config = Join-Path $configDir "agent.toml"
Set-Content -Path $config -Value $lines -Encoding UTF8
# Only administrators and SYSTEM may change what the agent runs.
icacls $config /inheritance:r /grant:r "Administrators:F" "SYSTEM:F" | Out-Null
Write-Host "wrote $config"

$runArgs = @("run", "--config", "`"$config`"")
$testArgs = @("capability", "--config", $config)
if ($Advertise -ne "") { $runArgs += @("--advertise", $Advertise); $testArgs += @("--advertise", $Advertise) }

Write-Host "self-test: cis490-agent capability"
& $exe @testArgs
if ($LASTEXITCODE -ne 0) { throw "the capability self-test failed; fix the message above, then run this script again" }

Write-Host "self-test: cis490-agent check-server: reach $Server with the credentials"
& $exe check-server --config $config
if ($LASTEXITCODE -ne 0) { throw "the server check failed (unreachable server, untrusted certificate or refused credential, see above); fix it, then run this script again" }

$action = New-ScheduledTaskAction -Execute $exe -Argument ($runArgs -join " ") -WorkingDirectory $WorkDir
$trigger = New-ScheduledTaskTrigger -AtStartup
$settings = New-ScheduledTaskSettingsSet -RestartCount 999 -RestartInterval (New-TimeSpan -Minutes 1) `
    -ExecutionTimeLimit ([TimeSpan]::Zero) -StartWhenAvailable -AllowStartIfOnBatteries -DontStopIfGoingOnBatteries
$taskPrincipal = New-ScheduledTaskPrincipal -UserId "SYSTEM" -LogonType ServiceAccount -RunLevel Highest
Register-ScheduledTask -TaskName $TaskName -Action $action -Trigger $trigger -Settings $settings `
    -Principal $taskPrincipal -Force | Out-Null
Start-ScheduledTask -TaskName $TaskName
Write-Host "enrolled: Get-ScheduledTask $TaskName; logs go to the task's history"
