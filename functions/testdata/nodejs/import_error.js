// A missing module: specialization fails with MODULE_NOT_FOUND.
require('definitely-not-installed-kappa');
module.exports = async () => 'never';
