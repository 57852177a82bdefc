// ciCompress: the ci-compress gate as a Jenkins shared-library step.
//
//   @Library('ci-compress@v0.1.0') _
//   ciCompress(config: 'compress.yaml', failOn: 'fail', install: true, mlflowCredentialsId: 'mlflow-token')
//
// Runs `ci-compress run`, publishes junit.xml (one test case per threshold), archives
// report.json / report.md / junit.xml, links report.md from the build description, then
// maps exit codes to build results:
//   0 gate passed                                   -> SUCCESS
//   6 passed with warnings (failOn: 'warn')         -> unstable(...)
//   1 gate failed                                   -> error(...)   (FAILURE)
//   5 inconclusive (the holdout could not decide)   -> error(...) with its own message
//   7 passed, not promoted (the champion moved)     -> error(...) with its own message
//   2 config, 3 model/data, 4 MLflow/network, 70 bug -> error(...) with its own message
//   ci-compress missing (127) or pip install failed  -> error(...) before the gate runs
// failOn: 'never' reports and never fails on the gate's result (tool errors still fail).
// Arguments reach the shell through withEnv, never interpolated into the script text.
// Help: ciCompress.txt beside this file.

def call(Map args = [:]) {
    // The release this library file belongs to: `install: true` installs ci-compress from
    // the source archive at this tag (never a bare package name from an index). Keep it
    // equal to the library version you load; tests/e2e/test_wrapper_jenkins.py checks it
    // matches pyproject.toml's version.
    String defaultPackage = 'https://github.com/ci-compress/ci-compress/archive/refs/tags/v0.1.0.tar.gz'
    String config = (args.config ?: 'compress.yaml') as String
    String reportDir = (args.reportDir ?: 'ci-compress-report') as String
    String failOn = (args.failOn ?: 'fail') as String
    String python = (args.python ?: 'python3') as String
    String holdoutLimit = (args.holdoutLimit ?: '') as String
    String mlflowTrackingUri = (args.mlflowTrackingUri ?: '') as String
    String mlflowCredentialsId = (args.mlflowCredentialsId ?: '') as String
    boolean install = (args.install ?: false) as boolean
    String packageSpec = (args.packageSpec ?: defaultPackage) as String
    String torchSpec = (args.torchSpec ?: 'torch==2.13.0') as String
    String torchIndexUrl = (args.torchIndexUrl != null ? args.torchIndexUrl : 'https://download.pytorch.org/whl/cpu') as String
    String pipArgs = (args.pipArgs ?: '') as String

    if (!(failOn in ['fail', 'warn', 'never'])) {
        error("ciCompress: failOn must be 'fail', 'warn' or 'never', got '${failOn}'")
    }

    // install: true builds a venv in the workspace (docker agents rarely let pip write system-wide)
    String gatePython = install ? "${env.WORKSPACE}/.ci-compress-venv/bin/python" : python
    String reportUrl = env.BUILD_URL ? "${env.BUILD_URL}artifact/${reportDir}/report.md" : ''
    List<String> envList = [
        "CI_COMPRESS_BASE_PYTHON=${python}",
        "CI_COMPRESS_PYTHON=${gatePython}",
        "CI_COMPRESS_CONFIG=${config}",
        "CI_COMPRESS_REPORT_DIR=${reportDir}",
        "CI_COMPRESS_FAIL_ON=${failOn}",
        "CI_COMPRESS_HOLDOUT_LIMIT=${holdoutLimit}",
        "CI_COMPRESS_PACKAGE=${packageSpec}",
        "CI_COMPRESS_TORCH_SPEC=${torchSpec}",
        "CI_COMPRESS_TORCH_INDEX_URL=${torchIndexUrl}",
        "CI_COMPRESS_PIP_ARGS=${pipArgs}",
        "CI_COMPRESS_REPORT_URL=${reportUrl}",
    ]
    if (mlflowTrackingUri) {
        envList << "MLFLOW_TRACKING_URI=${mlflowTrackingUri}"
    }

    int runCode = 0
    int reportCode = 0
    withEnv(envList) {
        if (install) {
            int installCode = sh(label: 'install ci-compress', returnStatus: true, script: '''
                set -e
                "$CI_COMPRESS_BASE_PYTHON" -m venv "$WORKSPACE/.ci-compress-venv"
                if [ -n "$CI_COMPRESS_TORCH_INDEX_URL" ]; then
                  "$CI_COMPRESS_PYTHON" -m pip install "$CI_COMPRESS_TORCH_SPEC" --index-url "$CI_COMPRESS_TORCH_INDEX_URL"
                else
                  "$CI_COMPRESS_PYTHON" -m pip install "$CI_COMPRESS_TORCH_SPEC"
                fi
                "$CI_COMPRESS_PYTHON" -m pip install "$CI_COMPRESS_PACKAGE"
                if [ -n "$CI_COMPRESS_PIP_ARGS" ]; then
                  set -f; set -- $CI_COMPRESS_PIP_ARGS; set +f   # split on whitespace, never evaluated
                  "$CI_COMPRESS_PYTHON" -m pip install "$@"
                fi
            ''')
            if (installCode != 0) {
                error("ci-compress: pip could not install ci-compress (exit 4: infrastructure); check packageSpec, pipArgs and the index in the log")
            }
        }
        // A missing install is a tool error with its own message, never "gate failed".
        int found = sh(label: 'check ci-compress', returnStatus: true,
                       script: '"$CI_COMPRESS_PYTHON" -m ci_compress --version')
        if (found != 0) {
            error("ci-compress: not installed for ${gatePython} (exit 127): pass install: true, or python: an interpreter that has it")
        }
        Closure gate = {
            runCode = sh(label: 'ci-compress run', returnStatus: true, script: '''
                set -- run --config "$CI_COMPRESS_CONFIG" --report-dir "$CI_COMPRESS_REPORT_DIR"
                if [ -n "$CI_COMPRESS_HOLDOUT_LIMIT" ]; then set -- "$@" --holdout-limit "$CI_COMPRESS_HOLDOUT_LIMIT"; fi
                "$CI_COMPRESS_PYTHON" -m ci_compress "$@"
            ''')
        }
        if (mlflowCredentialsId) {
            withCredentials([string(credentialsId: mlflowCredentialsId, variable: 'MLFLOW_TRACKING_TOKEN')]) {
                gate()
            }
        } else {
            gate()
        }

        junit(testResults: "${reportDir}/junit.xml", allowEmptyResults: true,
              skipMarkingBuildUnstable: failOn == 'never')
        archiveArtifacts(artifacts: "${reportDir}/report.json, ${reportDir}/report.md, ${reportDir}/junit.xml",
                         allowEmptyArchive: true, fingerprint: true)

        // 0 pass, 1 fail, 5 inconclusive (6 warn), 7 passed but not promoted (the
        // champion moved meanwhile): a result, rendered like the others.
        if (runCode in [0, 1, 5, 6, 7]) {
            reportCode = sh(label: 'ci-compress report jenkins', returnStatus: true, script: '''
                set -- --report "$CI_COMPRESS_REPORT_DIR/report.json" --fail-on "$CI_COMPRESS_FAIL_ON" \
                  --description-file "$CI_COMPRESS_REPORT_DIR/description.txt"
                if [ -n "$CI_COMPRESS_REPORT_URL" ]; then set -- "$@" --report-url "$CI_COMPRESS_REPORT_URL"; fi
                "$CI_COMPRESS_PYTHON" -m ci_compress report jenkins "$@"
            ''')
            if (fileExists("${reportDir}/description.txt")) {
                currentBuild.description = readFile("${reportDir}/description.txt").trim()
            }
        }
    }

    switch (runCode) {
        case 0:
        case 1:
        case 5:
        case 6:
            break
        case 2:
            error("ci-compress: config or usage error (exit 2): fix ${config}; the log names the field")
            break
        case 3:
            error('ci-compress: the model artifact or holdout data cannot be used (exit 3); see the log')
            break
        case 4:
            error('ci-compress: infrastructure error (exit 4): MLflow or a download host unreachable; see the log')
            break
        case 7:
            if (failOn != 'never') {
                error('ci-compress: passed but not promoted (exit 7): another gate moved the alias after this one compared itself with the champion; re-run this build to compare with the new champion')
            }
            break
        case 70:
            error('ci-compress: internal error (exit 70), a bug; the log names the crash log')
            break
        default:
            error("ci-compress: could not decide (exit ${runCode}); see the log")
    }

    switch (reportCode) {
        case 0:
            break
        case 6:
            unstable('ci-compress: the gate passed with warnings (failOn: warn)')
            break
        case 1:
            error('ci-compress: the gate failed; see the test results and report.md')
            break
        case 5:
            error('ci-compress: the gate was inconclusive (exit 5): the holdout cannot tell the accuracy drop from the limit; use a larger holdout, or thresholds.inconclusive: warn')
            break
        default:
            error("ci-compress: could not render the report (exit ${reportCode}); see the log")
    }
    return [exitCode: runCode, reportExitCode: reportCode, passed: runCode == 0]
}
