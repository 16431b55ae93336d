// A single .mjs file.
export default async () => 'hello from mjs\n';
export async function main(context) { return { status: 201, body: `main ${context.request.method}\n` }; }
