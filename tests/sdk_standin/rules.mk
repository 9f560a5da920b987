# Stand-in for the OpenWrt SDK's rules.mk (tests only): the install macros
# and build directories a package Makefile uses, under STANDIN_TMP.
INCLUDE_DIR:=$(TOPDIR)/include
PKG_BUILD_DIR=$(STANDIN_TMP)/build
PKG_INSTALL_DIR=$(STANDIN_TMP)/ipkg-install
INSTALL_DIR:=install -d -m0755
INSTALL_DATA:=install -m0644
INSTALL_BIN:=install -m0755
CP:=cp -fpR
