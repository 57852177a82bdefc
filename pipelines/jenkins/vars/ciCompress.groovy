// ciCompress: the ci-compress gate as a Jenkins shared-library step.
//
//   @Library('ci-compress') _
//   ciCompress(config: 'compress.yaml', failOn: 'fail', mlflowCredentialsId: 'mlflow-token')
//
// Runs `ci-compress run`, publishes junit.xml (one test case per threshold) and archives
// report.json / report.md, then maps exit codes to build results:
//   0 gate passed                      -> SUCCESS
//   6 passed with warnings (failOn: 'warn')  -> unstable(...)
//   1 gate failed                      -> error(...)   (FAILURE)
//   2 config, 3 model/data, 4 MLflow/network, 70 bug -> error(...) with its own message
// Arguments reach the shell through withEnv, never interpolated into the script text.
// Help: ciCompress.txt beside this file.

def call(Map args = [:]) {
    String config = (args.config ?: 'compress.yaml') as String
    String reportDir = (args.reportDir ?: 'ci-compress-report') as String
    String failOn = (args.failOn ?: 'fail') as String
    String python = (args.python ?: 'python3') as String
    String holdoutLimit = (args.holdoutLimit ?: '') as String
    String mlflowTrackingUri = (args.mlflowTrackingUri ?: '') as String
    String mlflowCredentialsId = (args.mlflowCredentialsId ?: '') as String
    boolean install = (args.install ?: false) as boolean
    String packageSpec = (args.packageSpec ?: 'ci-compress') as String
    String torchIndexUrl = (args.torchIndexUrl != null ? args.torchIndexUrl : 'https://download.pytorch.org/whl/cpu') as String

    if (!(failOn in ['fail', 'warn', 'never'])) {
        error("ciCompress: failOn must be 'fail', 'warn' or 'never', got '${failOn}'")
    }

    // install: true builds a venv in the workspace (docker agents rarely let pip write system-wide)
    String gatePython = install ? "${env.WORKSPACE}/.ci-compress-venv/bin/python" : python
    List<String> envList = [
        "CI_COMPRESS_BASE_PYTHON=${python}",
        "CI_COMPRESS_PYTHON=${gatePython}",
        "CI_COMPRESS_CONFIG=${config}",
        "CI_COMPRESS_REPORT_DIR=${reportDir}",
        "CI_COMPRESS_FAIL_ON=${failOn}",
        "CI_COMPRESS_HOLDOUT_LIMIT=${holdoutLimit}",
        "CI_COMPRESS_PACKAGE=${packageSpec}",
        "CI_COMPRESS_TORCH_INDEX_URL=${torchIndexUrl}",
    ]
    if (mlflowTrackingUri) {
        envList << "MLFLOW_TRACKING_URI=${mlflowTrackingUri}"
    }

    int runCode = 0
    int reportCode = 0
    withEnv(envList) {
        if (install) {
            sh(label: 'install ci-compress', script: '''
                "$CI_COMPRESS_BASE_PYTHON" -m venv "$WORKSPACE/.ci-compress-venv"
                if [ -n "$CI_COMPRESS_TORCH_INDEX_URL" ]; then
                  "$CI_COMPRESS_PYTHON" -m pip install torch --index-url "$CI_COMPRESS_TORCH_INDEX_URL"
                fi
                "$CI_COMPRESS_PYTHON" -m pip install "$CI_COMPRESS_PACKAGE"
            ''')
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

        if (runCode == 0 || runCode == 1) {
            reportCode = sh(label: 'ci-compress report jenkins', returnStatus: true, script: '''
                "$CI_COMPRESS_PYTHON" -m ci_compress report jenkins \
                  --report "$CI_COMPRESS_REPORT_DIR/report.json" \
                  --fail-on "$CI_COMPRESS_FAIL_ON" \
                  --description-file "$CI_COMPRESS_REPORT_DIR/description.txt"
            ''')
            if (fileExists("${reportDir}/description.txt")) {
                currentBuild.description = readFile("${reportDir}/description.txt").trim()
            }
        }
    }

    switch (runCode) {
        case 0:
        case 1:
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
        default:
            error("ci-compress: could not render the report (exit ${reportCode}); see the log")
    }
    return [exitCode: runCode, reportExitCode: reportCode, passed: runCode == 0]
}
