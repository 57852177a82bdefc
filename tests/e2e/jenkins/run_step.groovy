// Runs a shared-library step (vars/<name>.groovy) outside Jenkins, for tests only.
// The Pipeline steps it calls are stand-ins with Jenkins' semantics: `sh` runs bash for
// real (returnStatus returns the exit code, otherwise non-zero throws), `withEnv` and
// `withCredentials` overlay environment variables, `error` aborts the build as FAILURE,
// `unstable` marks it UNSTABLE, `junit` with a failed test case marks it UNSTABLE.
// Usage: groovy run_step.groovy <step.groovy> <workspace> <json args>
import groovy.json.JsonOutput
import groovy.json.JsonSlurper

def stepFile = new File(args[0])
def workspace = new File(args[1])
Map stepArgs = new JsonSlurper().parseText(args[2]) as Map

def envStack = [[WORKSPACE: workspace.absolutePath]]
def currentEnv = { -> envStack.inject([:]) { acc, m -> acc + m } }
def log = []
def build = new Expando(result: 'SUCCESS', description: null)
def worse = { String r ->
    def order = ['SUCCESS', 'UNSTABLE', 'FAILURE']
    if (order.indexOf(r) > order.indexOf(build.result)) { build.result = r }
}

def binding = new Binding()
binding.setVariable('env', new Expando(WORKSPACE: workspace.absolutePath, BUILD_URL: System.getenv('BUILD_URL')))
binding.setVariable('currentBuild', build)
binding.setVariable('sh', { Map a ->
    def pb = new ProcessBuilder('bash', '-c', a.script as String)
    pb.directory(workspace)
    pb.environment().putAll(currentEnv().collectEntries { k, v -> [(k as String): (v as String)] })
    pb.redirectErrorStream(true)
    def p = pb.start()
    def out = p.inputStream.text
    int code = p.waitFor()
    log << "[sh ${a.label}] exit ${code}\n${out}"
    if (a.returnStatus) { return code }
    if (code != 0) { throw new RuntimeException("script returned exit code ${code}") }
    return null
})
binding.setVariable('withEnv', { List entries, Closure body ->
    envStack << entries.collectEntries { e -> def kv = (e as String).split('=', 2); [(kv[0]): kv[1]] }
    try { return body() } finally { envStack.remove(envStack.size() - 1) }
})
binding.setVariable('string', { Map a -> a })
binding.setVariable('withCredentials', { List creds, Closure body ->
    envStack << creds.collectEntries { c -> [(c.variable): "secret-for-${c.credentialsId}"] }
    try { return body() } finally { envStack.remove(envStack.size() - 1) }
})
def junitCalls = []
binding.setVariable('junit', { Map a ->
    def f = new File(workspace, a.testResults as String)
    junitCalls << [path: a.testResults, exists: f.exists(), skipMarkingBuildUnstable: a.skipMarkingBuildUnstable]
    if (!f.exists()) {
        if (!a.allowEmptyResults) { throw new RuntimeException("No test report files were found") }
        return
    }
    def failures = new XmlSlurper().parse(f).'**'.findAll { it.name() == 'failure' }.size()
    if (failures > 0 && !a.skipMarkingBuildUnstable) { worse('UNSTABLE') }
})
def archived = []
binding.setVariable('archiveArtifacts', { Map a -> archived << a.artifacts })
binding.setVariable('fileExists', { String p -> new File(workspace, p).exists() })
binding.setVariable('readFile', { String p -> new File(workspace, p).text })
binding.setVariable('error', { String msg -> throw new StepError(msg) })
binding.setVariable('unstable', { String msg -> log << "[unstable] ${msg}"; worse('UNSTABLE') })

class StepError extends RuntimeException { StepError(String m) { super(m) } }

def step = new GroovyShell(binding).parse(stepFile)
def returned = null
String errorMessage = null
try {
    returned = step.invokeMethod('call', [stepArgs] as Object[])
} catch (StepError e) {
    errorMessage = e.message
    worse('FAILURE')
}
println JsonOutput.toJson([
    result: build.result, description: build.description, error: errorMessage,
    returned: returned, junit: junitCalls, archived: archived, log: log.join('\n'),
])
