# node-gyp build of the sd_notify addon (see sd_notify.c); scripts/bootstrap.sh
# runs it. Output: native/build/Release/sd_notify.node (ignored by git).
{
  "targets": [
    {
      "target_name": "sd_notify",
      "sources": ["sd_notify.c"],
      "cflags": ["-std=gnu11", "-Wall", "-Wextra", "-Werror=implicit-function-declaration"]
    }
  ]
}
