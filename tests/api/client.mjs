// What a Supabase front end does, with Supabase's own client library (@supabase/postgrest-js):
// read the signed-in user's tasks, then try to queue a task in someone else's project and in
// the user's own; then the queue's verbs with rpc(): enqueue (with a dependency), release,
// cancel (cascading), and the refusals.  Run by tests/integration/api/test_postgrest_js.py,
// which passes
//   POSTGREST_URL, USER_TOKEN, OWN_PROJECT_ID, OTHER_PROJECT_ID, OWN_TASK_ID
// in the environment and parses the one JSON object printed on stdout.
import { PostgrestClient } from '@supabase/postgrest-js';

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};

const client = new PostgrestClient(env('POSTGREST_URL'), {
  headers: { Authorization: `Bearer ${env('USER_TOKEN')}` },
});

const outcome = (res) => ({
  status: res.status,
  rows: res.data,
  error: res.error && { code: res.error.code, message: res.error.message },
});

const task = (projectId) => ({ project_id: projectId, task_type: 'from_js', params: { by: 'postgrest-js' } });

const read = await client.from('tasks').select('id, project_id').order('id');
const intoOther = await client.from('tasks').insert(task(env('OTHER_PROJECT_ID'))).select('id');
const intoOwn = await client.from('tasks').insert(task(env('OWN_PROJECT_ID'))).select('id, project_id');

const held = await client.rpc('enqueue_task', {
  project_id: env('OWN_PROJECT_ID'),
  task_type: 'stitch',
  params: { by: 'rpc' },
  depends_on: [env('OWN_TASK_ID')],
  status: 'Pending',
});
const released = await client.rpc('release_task', { task_id: held.data?.id });
const releasedAgain = await client.rpc('release_task', { task_id: held.data?.id });
const rpcIntoOther = await client.rpc('enqueue_task', {
  project_id: env('OTHER_PROJECT_ID'),
  task_type: 'x',
});
const runIt = await client.from('tasks').update({ status: 'Complete' }).eq('id', env('OWN_TASK_ID')).select('id');
const cancelled = await client.rpc('cancel_task', { task_id: env('OWN_TASK_ID'), reason: 'not needed' });

process.stdout.write(
  JSON.stringify({
    read: outcome(read),
    intoOther: outcome(intoOther),
    intoOwn: outcome(intoOwn),
    held: outcome(held),
    released: outcome(released),
    releasedAgain: outcome(releasedAgain),
    rpcIntoOther: outcome(rpcIntoOther),
    runIt: outcome(runIt),
    cancelled: outcome(cancelled),
  }) + '\n',
);
