<#
.SYNOPSIS
  Enrolls this Windows host in a cis490 fleet: installs cis490-agent.exe, writes
  %ProgramData%\cis490\agent.toml, runs the capability self-test, and registers a scheduled
  task that starts the agent at boot and restarts it on failure.

.EXAMPLE
  # From an elevated PowerShell in the checkout:
  .\manifests\install-agent.ps1 -Server http://pi.local:8787 -WorkDir C:\cis490\training `
      -Token $env:CIS490_WORKER_TOKEN -MaxConcurrent 1
#>
[CmdletBinding()]
param(
    [Parameter(Mandatory = $true)] [string] $Server,
    [Parameter(Mandatory = $true)] [string] $WorkDir,
    [string] $Token = "",
    [string] $Name = "",
    [int] $MaxConcurrent = 1,
    [string] $Advertise = "",
    [string] $Binary = "",
    [string] $TaskName = "cis490-agent"
)
$ErrorActionPreference = "Stop"

$principal = New-Object Security.Principal.WindowsPrincipal([Security.Principal.WindowsIdentity]::GetCurrent())
if (-not $principal.IsInRole([Security.Principal.WindowsBuiltInRole]::Administrator)) {
    throw "run from an elevated PowerShell (it registers a scheduled task)"
}
if (-not (Test-Path -PathType Container $WorkDir)) { throw "work dir $WorkDir does not exist" }
if ($MaxConcurrent -lt 1) { throw "-MaxConcurrent must be at least 1" }

if ($Binary -eq "") {
    $Binary = Join-Path $PSScriptRoot "..\target\release\cis490-agent.exe"
}
if (-not (Test-Path $Binary)) {
    throw "no cis490-agent.exe at $Binary: build it (cargo build --release -p cis490-agent) or pass -Binary"
}

$installDir = Join-Path $env:ProgramFiles "cis490"
$configDir = Join-Path $env:ProgramData "cis490"
$stateDir = Join-Path $configDir "agent-state"
New-Item -ItemType Directory -Force -Path $installDir, $configDir, $stateDir | Out-Null
$exe = Join-Path $installDir "cis490-agent.exe"
Copy-Item -Force $Binary $exe
Write-Host "installed $exe"

function TomlString([string] $s) { '"' + ($s -replace '\\', '\\' -replace '"', '\"') + '"' }
$lines = @(
    "# Written by install-agent.ps1 on $((Get-Date).ToUniversalTime().ToString('s'))Z; see etc/agent.toml.example.",
    "server = $(TomlString $Server)",
    "work_dir = $(TomlString $WorkDir)",
    "state_dir = $(TomlString $stateDir)",
    "python = ""python""",
    "max_concurrent = $MaxConcurrent"
)
if ($Token -ne "") { $lines += "worker_token = $(TomlString $Token)" }
if ($Name -ne "") { $lines += "name = $(TomlString $Name)" }
$config = Join-Path $configDir "agent.toml"
Set-Content -Path $config -Value $lines -Encoding UTF8
# Only administrators and SYSTEM may read the token.
icacls $config /inheritance:r /grant:r "Administrators:F" "SYSTEM:F" | Out-Null
Write-Host "wrote $config"

$runArgs = @("run", "--config", "`"$config`"")
$testArgs = @("capability", "--config", $config)
if ($Advertise -ne "") { $runArgs += @("--advertise", $Advertise); $testArgs += @("--advertise", $Advertise) }

Write-Host "self-test: cis490-agent capability"
& $exe @testArgs
if ($LASTEXITCODE -ne 0) { throw "the capability self-test failed; fix the message above, then run this script again" }

$action = New-ScheduledTaskAction -Execute $exe -Argument ($runArgs -join " ") -WorkingDirectory $WorkDir
$trigger = New-ScheduledTaskTrigger -AtStartup
$settings = New-ScheduledTaskSettingsSet -RestartCount 999 -RestartInterval (New-TimeSpan -Minutes 1) `
    -ExecutionTimeLimit ([TimeSpan]::Zero) -StartWhenAvailable -AllowStartIfOnBatteries -DontStopIfGoingOnBatteries
$taskPrincipal = New-ScheduledTaskPrincipal -UserId "SYSTEM" -LogonType ServiceAccount -RunLevel Highest
Register-ScheduledTask -TaskName $TaskName -Action $action -Trigger $trigger -Settings $settings `
    -Principal $taskPrincipal -Force | Out-Null
Start-ScheduledTask -TaskName $TaskName
Write-Host "enrolled: Get-ScheduledTask $TaskName; logs go to the task's history"
