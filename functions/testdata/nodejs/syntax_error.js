// A syntax error: specialization must fail and name this file and line.
module.exports = async (context) => {
  return { status: 200, body: 'never' ;
};
