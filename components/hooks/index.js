// runner-platform's container hooks entry point (ACTIONS_RUNNER_CONTAINER_HOOKS).
//
// The runner runs this file with its own node for every hook command, the command's
// input (JSON) on stdin. It runs the hooks the actions-runner image ships
// (RUNNER_PLATFORM_STOCK_HOOKS) with the same input and, once prepare_job has created
// the job pod, makes every pod the hooks labelled runner-pod=<this runner> a dependent of
// the runner pod: the garbage collector then deletes job pods with their runner even
// when the runner never gets to run its cleanup hook (deadline, eviction, node loss, the
// reaper). The stock hooks set no owner (actions/runner-container-hooks issue 255).
// A job pod that cannot be adopted fails the job: it would otherwise outlive the runner.
'use strict'

const { spawnSync } = require('child_process')
const fs = require('fs')
const https = require('https')
const path = require('path')

const SA_DIR =
  process.env.RUNNER_PLATFORM_SA_DIR || '/var/run/secrets/kubernetes.io/serviceaccount'
const RUNNER_LABEL = 'runner-pod'
const ATTEMPTS = 5

function api(method, urlPath, body) {
  const payload = body === undefined ? undefined : JSON.stringify(body)
  const options = {
    host: process.env.KUBERNETES_SERVICE_HOST,
    port: process.env.KUBERNETES_SERVICE_PORT,
    path: urlPath,
    method,
    ca: fs.readFileSync(path.join(SA_DIR, 'ca.crt')),
    headers: {
      Authorization: `Bearer ${fs.readFileSync(path.join(SA_DIR, 'token'), 'utf8').trim()}`,
      Accept: 'application/json',
      'Content-Type': 'application/merge-patch+json'
    }
  }
  return new Promise((resolve, reject) => {
    const request = https.request(options, response => {
      const chunks = []
      response.on('data', chunk => chunks.push(chunk))
      response.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8')
        if (response.statusCode >= 300) {
          reject(new Error(`${method} ${urlPath}: ${response.statusCode} ${text.slice(0, 500)}`))
        } else {
          resolve(JSON.parse(text))
        }
      })
    })
    request.on('error', reject)
    if (payload !== undefined) request.write(payload)
    request.end()
  })
}

async function adoptJobPods() {
  const runner = process.env.ACTIONS_RUNNER_POD_NAME
  const uid = process.env.RUNNER_PLATFORM_POD_UID
  const namespace = process.env.ACTIONS_RUNNER_KUBERNETES_NAMESPACE
  if (!runner || !uid || !namespace) {
    throw new Error('ACTIONS_RUNNER_POD_NAME, RUNNER_PLATFORM_POD_UID and ' +
      'ACTIONS_RUNNER_KUBERNETES_NAMESPACE must be set')
  }
  const owner = {
    apiVersion: 'v1',
    kind: 'Pod',
    name: runner,
    uid,
    controller: false,
    // Blocking the owner's deletion would need rights on the runner pod's finalizers.
    blockOwnerDeletion: false
  }
  const selector = encodeURIComponent(`${RUNNER_LABEL}=${runner}`)
  const base = `/api/v1/namespaces/${encodeURIComponent(namespace)}/pods`
  const pods = await api('GET', `${base}?labelSelector=${selector}`)
  for (const pod of pods.items) {
    const refs = pod.metadata.ownerReferences || []
    if (refs.some(ref => ref.uid === uid)) continue
    // A merge patch replaces the whole list; resourceVersion makes it conditional.
    await api('PATCH', `${base}/${encodeURIComponent(pod.metadata.name)}`, {
      metadata: { resourceVersion: pod.metadata.resourceVersion, ownerReferences: [...refs, owner] }
    })
    console.log(`runner-platform: job pod ${pod.metadata.name} is deleted with ${runner}`)
  }
}

async function main() {
  const input = fs.readFileSync(0)
  let command
  try {
    command = JSON.parse(input.toString('utf8')).command
  } catch {
    command = undefined
  }
  const stock = process.env.RUNNER_PLATFORM_STOCK_HOOKS || '/home/runner/k8s/index.js'
  const hooks = spawnSync(process.execPath, [stock], { input, stdio: ['pipe', 'inherit', 'inherit'] })
  if (hooks.error) throw hooks.error
  if (hooks.status !== 0) return hooks.status === null ? 1 : hooks.status
  if (command !== 'prepare_job') return 0
  for (let attempt = 1; ; attempt++) {
    try {
      await adoptJobPods()
      return 0
    } catch (error) {
      if (attempt >= ATTEMPTS) {
        console.error(`runner-platform: cannot make job pods dependents of the runner: ${error}`)
        return 1
      }
      await new Promise(resolve => setTimeout(resolve, 250 * 2 ** attempt))
    }
  }
}

main().then(
  code => process.exit(code),
  error => {
    console.error(`runner-platform: ${error}`)
    process.exit(1)
  }
)
