/* LD_PRELOAD shim: gives h2load (which has no client-certificate option) the client
 * certificate named by $H2LOAD_CLIENT_CERT / $H2LOAD_CLIENT_KEY, so it can load an
 * mTLS-only gRPC server. Opaque types: no OpenSSL headers needed at build time. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
typedef struct ssl_ctx_st SSL_CTX;
typedef struct ssl_method_st SSL_METHOD;
typedef struct ossl_lib_ctx_st OSSL_LIB_CTX;
int SSL_CTX_use_certificate_chain_file(SSL_CTX *ctx, const char *file);
int SSL_CTX_use_PrivateKey_file(SSL_CTX *ctx, const char *file, int type);

static SSL_CTX *with_client_cert(SSL_CTX *ctx) {
  const char *cert = getenv("H2LOAD_CLIENT_CERT"), *key = getenv("H2LOAD_CLIENT_KEY");
  if (ctx && cert && key) {
    SSL_CTX_use_certificate_chain_file(ctx, cert);
    SSL_CTX_use_PrivateKey_file(ctx, key, 1 /* SSL_FILETYPE_PEM */);
  }
  return ctx;
}
SSL_CTX *SSL_CTX_new(const SSL_METHOD *method) {
  SSL_CTX *(*real)(const SSL_METHOD *) = dlsym(RTLD_NEXT, "SSL_CTX_new");
  return with_client_cert(real(method));
}
SSL_CTX *SSL_CTX_new_ex(OSSL_LIB_CTX *libctx, const char *propq, const SSL_METHOD *method) {
  SSL_CTX *(*real)(OSSL_LIB_CTX *, const char *, const SSL_METHOD *) =
      dlsym(RTLD_NEXT, "SSL_CTX_new_ex");
  return with_client_cert(real(libctx, propq, method));
}
