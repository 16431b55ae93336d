// An ES module package ("type": "module"): default and named exports.
export default async function (context) {
  return { body: { esm: true, env: process.env.GREETING ?? null } };
}
export const named = async () => 'named export\n';
