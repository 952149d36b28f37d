// A durable deploy: build, wait for approval, pause, then check in parallel.
// Store it with `cairn module put examples/deploy.js` and start `deploy`
// (see the README's "Durable scripts" section).

export async function deploy(ctx, args) {
  const build = await ctx.tool("echo", { value: { built: args.version } }); // a child process
  await ctx.emit("progress", { text: `built ${build.built}` }); // a declared event type
  ctx.log("waiting for approval of", args.version);
  const ok = await ctx.waitSignal("approve", { timeoutMs: 86400000 }); // suspends; null on timeout
  if (!ok) throw Object.assign(new Error("not approved in time"), { code: "not_approved" });
  await ctx.sleep(1000); // a durable timer; suspends
  const [a, b] = await Promise.all([ctx.tool("echo", { value: 1 }), ctx.tool("echo", { value: 2 })]);
  return { version: args.version, approved_by: ok.by, checks: a + b, at: ctx.now() };
}
